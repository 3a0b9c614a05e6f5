//! Running `ip` and `tc`, and starting a process inside a namespace.

use crate::lab::process::find_program;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::Path;
use std::process::Command;

/// Makes `cmd` run inside the network namespace at `netns` (a file under
/// `/run/netns`). The child joins it right before `exec`, so its pid, its
/// process group and a [`ChildGuard`](crate::lab::process::ChildGuard) around it
/// work as for any child.
pub fn enter_netns(cmd: &mut Command, netns: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let ns = File::open(netns)
        .with_context(|| format!("opening network namespace {}", netns.display()))?;
    // SAFETY: the closure runs in the forked child before exec and only
    // makes the setns(2) system call, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(find_program(program)?)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(super) fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

pub(super) fn tc(netns: Option<&str>, args: &[&str]) -> Result<String> {
    match netns {
        Some(ns) => {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            run("tc", &all)
        }
        None => run("tc", args),
    }
}
