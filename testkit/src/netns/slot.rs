//! Slots: each lab claims one (a lock file its process holds while it
//! lives), which names its links and picks its subnet; leftovers of a lab
//! whose process died are removed by the next lab that finds its lock free.

use super::cmd::ip;
use super::PREFIX;
use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::path::{Path, PathBuf};
use tracing::warn;

/// Where the slots' lock files are.
pub(super) const LOCK_DIR: &str = "/run/lockstep-netns";

fn lock_path(slot: u16) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("slot-{slot}.lock"))
}

/// Takes slot `slot`'s lock if no live process holds it.
pub(super) fn try_lock(slot: u16) -> Result<Option<Flock<File>>> {
    let path = lock_path(slot);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// True when something other than a lab of ours has an address in the
/// slot's subnet.
pub(super) fn subnet_in_use(slot: u16) -> Result<bool> {
    let out = ip(&[
        "-4",
        "-o",
        "addr",
        "show",
        "to",
        &format!("198.18.{slot}.0/24"),
    ])?;
    // Lines read "5: lsk12    inet 198.18.12.1/24 ...".
    Ok(out.lines().any(|line| {
        let dev = line.split_whitespace().nth(1).unwrap_or("");
        slot_of(dev.split('@').next().unwrap_or(dev)) != Some(slot)
    }))
}

/// The slot a name of ours belongs to (`lsk12`, `lsk12v0`, `lsk12-0`...).
fn slot_of(name: &str) -> Option<u16> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let tail = &rest[digits.len()..];
    let ours = tail.is_empty()
        || tail.starts_with('-')
        || tail.starts_with('v')
        || tail.starts_with('t')
        || tail.starts_with('p');
    if ours && !digits.is_empty() {
        digits.parse().ok()
    } else {
        None
    }
}

fn our_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| slot_of(n).is_some())
                .collect()
        })
        .unwrap_or_default()
}

fn our_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| slot_of(n).is_some())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes leftovers of labs whose process died (their lock is free).
pub(super) fn reap_stale() {
    let mut slots: Vec<u16> = our_netns()
        .iter()
        .chain(our_links().iter())
        .filter_map(|n| slot_of(n))
        .collect();
    slots.sort_unstable();
    slots.dedup();
    for slot in slots {
        // Held only for the cleanup; a live lab's lock is never free.
        if let Ok(Some(_lock)) = try_lock(slot) {
            warn!(slot, "removing a dead lab's network");
            remove_slot(slot);
        }
    }
}

/// Removes every namespace and link of `slot`, killing the processes left
/// inside its namespaces (a dead lab's sidecars and HAProxies). Call only
/// while holding the slot's lock.
pub(super) fn remove_slot(slot: u16) {
    for ns in our_netns().into_iter().filter(|n| slot_of(n) == Some(slot)) {
        if let Ok(pids) = ip(&["netns", "pids", &ns]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = ip(&["netns", "del", &ns]);
    }
    let bridge = format!("{PREFIX}{slot}");
    // Ports first; the bridge last.
    let mut links: Vec<String> = our_links()
        .into_iter()
        .filter(|n| slot_of(n) == Some(slot))
        .collect();
    links.sort_by_key(|n| *n == bridge);
    for link in links {
        let _ = ip(&["link", "del", &link]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_their_slot() {
        assert_eq!(slot_of("lsk12"), Some(12));
        assert_eq!(slot_of("lsk12v0"), Some(12));
        assert_eq!(slot_of("lsk12-3"), Some(12));
        assert_eq!(slot_of("lsk7t1"), Some(7));
        assert_eq!(slot_of("lsk7p1"), Some(7));
        assert_eq!(slot_of("lsk"), None);
        assert_eq!(slot_of("lskx"), None);
        assert_eq!(slot_of("lsk12q"), None);
        assert_eq!(slot_of("eth0"), None);
    }
}
