//! A slow, lossy link without netem: a member's frames pass through two
//! TAP devices and threads of this process that delay and drop them.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A slow, lossy link, as netem would make it: every frame in either
/// direction waits `delay` ± `jitter` (uniform) and is lost with
/// `loss_percent`. Unlike netem, jitter never reorders frames of one
/// direction (a frame waits at least as long as the one before it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impairment {
    pub delay: Duration,
    pub jitter: Duration,
    pub loss_percent: f64,
    /// Seeds the loss and jitter draws (random when `None`).
    pub seed: Option<u64>,
}

/// Opens a new (non-persistent) TAP device in this thread's namespace.
pub(super) fn open_tap(name: &str) -> Result<File> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    if name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} is too long");
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads one ifreq through the pointer, which is valid
    // for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("creating TAP device {name}"));
    }
    Ok(file)
}

/// Frames copied between a member's tap and the bridge's, delayed and
/// dropped on the way.
pub(super) struct Wire {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How often blocked wire threads look at the stop flag.
const WIRE_TICK_MS: u16 = 50;
const WIRE_TICK: Duration = Duration::from_millis(WIRE_TICK_MS as u64);

impl Wire {
    pub(super) fn start(name: &str, ns_tap: File, root_tap: File, imp: Impairment) -> Result<Wire> {
        let (ns_tap, root_tap) = (Arc::new(ns_tap), Arc::new(root_tap));
        let seed = imp.seed.unwrap_or_else(rand::random);
        // Dropped on an error below, which stops what was started.
        let mut wire = Wire {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for (dir, from, to, seed) in [
            ("out", &ns_tap, &root_tap, seed),
            ("in", &root_tap, &ns_tap, seed ^ 0x9e37_79b9_7f4a_7c15),
        ] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let (from, stop) = (from.clone(), wire.stop.clone());
            let reader = std::thread::Builder::new()
                .name(format!("wire-{name}-{dir}-rx"))
                .spawn(move || wire_reader(&from, &tx, imp, seed, &stop))
                .context("starting a wire thread")?;
            wire.threads.push(reader);
            let (to, stop) = (to.clone(), wire.stop.clone());
            let writer = std::thread::Builder::new()
                .name(format!("wire-{name}-{dir}-tx"))
                .spawn(move || wire_writer(&to, &rx, &stop))
                .context("starting a wire thread")?;
            wire.threads.push(writer);
        }
        Ok(wire)
    }
}

impl Drop for Wire {
    /// Stops and joins the threads; the taps vanish with their last file.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn wire_reader(
    from: &File,
    tx: &mpsc::Sender<(Instant, Vec<u8>)>,
    imp: Impairment,
    seed: u64,
    stop: &AtomicBool,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use rand::{Rng, SeedableRng};
    use std::os::fd::AsFd;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 65536];
    let mut last_due = Instant::now();
    let tick = PollTimeout::from(WIRE_TICK_MS);
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, tick) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        let n = match (&*from).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if imp.loss_percent > 0.0 && rng.random::<f64>() * 100.0 < imp.loss_percent {
            continue;
        }
        let spread = imp.jitter.as_secs_f64();
        let wait = (imp.delay.as_secs_f64() + rng.random_range(-spread..=spread)).max(0.0);
        let due = (Instant::now() + Duration::from_secs_f64(wait)).max(last_due);
        last_due = due;
        if tx.send((due, buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

fn wire_writer(to: &File, rx: &mpsc::Receiver<(Instant, Vec<u8>)>, stop: &AtomicBool) {
    loop {
        let (due, frame) = match rx.recv_timeout(WIRE_TICK) {
            Ok(f) => f,
            Err(mpsc::RecvTimeoutError::Timeout) if !stop.load(Ordering::SeqCst) => continue,
            Err(_) => return,
        };
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            std::thread::sleep((due - now).min(WIRE_TICK));
        }
        // A frame the kernel refuses is a lost frame.
        let _ = (&*to).write(&frame);
    }
}
