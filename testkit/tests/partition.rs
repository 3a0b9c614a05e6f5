//! Network faults on real etcd, HAProxy and sidecars, each member in its own
//! network namespace (`LabOptions::netns`): a member cut from etcd, sidecars
//! cut from each other, one-way loss between the leader and a member, and a
//! slow, lossy link. Throughout, the key-pair traffic must see no mismatch
//! and no two LBs may be seen serving different setups; after each heal the
//! link must serve one setup again within a stated bound.

use lockstep::lb::{LbError, LoadBalancer};
use lockstep::proto::{self, Setup as PSetup};
use lockstep::protocol::{LbTarget, Setup};
use lockstep_testkit::lab::sidecar::Timing;
use lockstep_testkit::lab::{Lab, LabOptions};
use lockstep_testkit::netns::{Impairment, LabNet, NetFaultGuard, Node};
use lockstep_testkit::traffic::Traffic;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstep_testkit::rt;
use lockstep_testkit::switch_request;

/// After a heal, the link serves one setup on every LB within this.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// A switch under a fault that leaves etcd reachable completes within this.
const SWITCH_BOUND: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Sampling every LB's routing

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Routes(LbTarget),
    /// A state lockstep never sets (both setups may route, or half up).
    Odd,
    Unreadable,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    start: Instant,
    end: Instant,
    seen: Seen,
}

/// Reads every LB's `show servers state` every ~10 ms.
struct Sampler {
    samples: Arc<Mutex<Vec<Vec<Sample>>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct SamplerReport {
    rounds: usize,
    /// An LB seen serving Y while another was certainly serving X (seen
    /// serving X before and after, with nothing else seen in between).
    proven_conflicts: Vec<String>,
    /// Rounds in which two LBs were read serving different setups; not
    /// proof on its own (the reads are not one instant).
    disagreeing_rounds: usize,
    odd: usize,
    unreadable: usize,
}

impl Sampler {
    fn start(lab: &Lab) -> Sampler {
        let lbs: Vec<_> = lab.lbs.iter().map(|lb| lb.adapter()).collect();
        let samples = Arc::new(Mutex::new(vec![Vec::new(); lbs.len()]));
        let out = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let reads = lbs.iter().map(|lb| async move {
                    let start = Instant::now();
                    let seen = match lb.observe().await {
                        Ok(o) => Seen::Routes(o.target),
                        Err(LbError::NotConfirmed { .. }) => Seen::Odd,
                        Err(_) => Seen::Unreadable,
                    };
                    Sample {
                        start,
                        end: Instant::now(),
                        seen,
                    }
                });
                let round = futures::future::join_all(reads).await;
                let mut all = out.lock().unwrap();
                for (i, s) in round.into_iter().enumerate() {
                    all[i].push(s);
                }
            }
        });
        Sampler { samples, task }
    }

    /// True if LB `i` was seen serving `setup` in every sample since `after`.
    fn always_served(&self, i: usize, setup: Setup, after: Instant) -> bool {
        self.samples.lock().unwrap()[i]
            .iter()
            .filter(|s| s.start >= after)
            .all(|s| s.seen == Seen::Routes(LbTarget::Serve(setup)))
    }

    /// When LB `i` stopped routing for good between `after` and `before`:
    /// the end of the first read of the blocked run that lasts until
    /// `before`, and what it was seen routing to before that run (`None`:
    /// blocked from `after` on). `None` if it was not blocked at `before`.
    fn blocked_for_good(
        &self,
        i: usize,
        after: Instant,
        before: Instant,
    ) -> Option<(Instant, Option<Seen>)> {
        let all = self.samples.lock().unwrap();
        let window: Vec<&Sample> = all[i]
            .iter()
            .filter(|s| s.start >= after && s.end <= before)
            .collect();
        let blocked = |s: &&Sample| s.seen == Seen::Routes(LbTarget::Blocked);
        if !window.last().is_some_and(blocked) {
            return None;
        }
        let first_of_run = window
            .iter()
            .rposition(|s| !blocked(s))
            .map_or(0, |k| k + 1);
        let before_run = first_of_run.checked_sub(1).map(|k| window[k].seen);
        Some((window[first_of_run].end, before_run))
    }

    fn report(&self) -> SamplerReport {
        let all = self.samples.lock().unwrap().clone();
        let mut r = SamplerReport {
            rounds: all.iter().map(Vec::len).min().unwrap_or(0),
            ..SamplerReport::default()
        };
        for lb in &all {
            r.odd += lb.iter().filter(|s| s.seen == Seen::Odd).count();
            r.unreadable += lb.iter().filter(|s| s.seen == Seen::Unreadable).count();
        }
        for k in 0..r.rounds {
            let mut served = all.iter().filter_map(|lb| match lb[k].seen {
                Seen::Routes(LbTarget::Serve(s)) => Some(s),
                _ => None,
            });
            if let Some(first) = served.next() {
                if served.any(|s| s != first) {
                    r.disagreeing_rounds += 1;
                }
            }
        }
        for (i, lb) in all.iter().enumerate() {
            // Runs of consecutive reads of LB i serving one setup: it served
            // it from the end of the run's first read to the start of its
            // last (a switch away and back within ~10 ms is impossible).
            let mut k = 0;
            while k < lb.len() {
                let Seen::Routes(LbTarget::Serve(x)) = lb[k].seen else {
                    k += 1;
                    continue;
                };
                let mut last = k;
                while last + 1 < lb.len() && lb[last + 1].seen == lb[k].seen {
                    last += 1;
                }
                let (from, to) = (lb[k].end, lb[last].start);
                for (j, other) in all.iter().enumerate().filter(|(j, _)| *j != i) {
                    for s in other {
                        if let Seen::Routes(LbTarget::Serve(y)) = s.seen {
                            if y != x && s.start >= from && s.end <= to {
                                r.proven_conflicts.push(format!(
                                    "LB {j} served {y} while LB {i} served {x} (run of {} reads)",
                                    last - k + 1
                                ));
                            }
                        }
                    }
                }
                k = last + 1;
            }
        }
        r
    }

    /// Stops sampling and asserts S1 as the LBs showed it.
    fn finish(self) -> SamplerReport {
        self.task.abort();
        let r = self.report();
        println!(
            "LB samples: {} rounds, proven conflicts {}, rounds with different setups read {}, odd states {}, unreadable {}",
            r.rounds,
            r.proven_conflicts.len(),
            r.disagreeing_rounds,
            r.odd,
            r.unreadable
        );
        assert!(r.rounds > 100, "too few LB samples: {r:?}");
        assert!(
            r.proven_conflicts.is_empty(),
            "two LBs served different setups: {:?}",
            r.proven_conflicts
        );
        assert_eq!(r.odd, 0, "an LB was in a state lockstep never sets");
        r
    }
}

// ---------------------------------------------------------------------------
// Lab helpers

fn net(lab: &Lab) -> &LabNet {
    lab.net.as_ref().expect("lab started with netns")
}

fn options(timing: Timing) -> LabOptions {
    LabOptions {
        netns: true,
        timing,
        ..LabOptions::default()
    }
}

async fn start(name: &str, options: LabOptions) -> (Lab, Traffic, Sampler) {
    let lab = Lab::start(name, options).await.expect("lab");
    let traffic = lab
        .start_traffic(10)
        .await
        .expect("key pairs flow through the namespaced LBs");
    let sampler = Sampler::start(&lab);
    (lab, traffic, sampler)
}

async fn leader(lab: &Lab) -> usize {
    lab.leader_index(None, Duration::from_secs(10))
        .await
        .expect("a leader")
}

/// Asks member `via` for a switchover; with `wait`, returns once it
/// completed (or failed).
async fn switchover(
    lab: &Lab,
    via: usize,
    to: Setup,
    wait: bool,
    timeout: Duration,
) -> Result<proto::SwitchReply, String> {
    // Over a lossy link a lost SYN or handshake packet costs a 1 s
    // retransmit, so one connect may miss its 2 s deadline: try again (the
    // switch, not the dial, is what these tests judge).
    let mut tries = 0;
    let mut admin = loop {
        tries += 1;
        match lab.admin(via).await {
            Ok(a) => break a,
            Err(e) if tries >= 5 => return Err(format!("{e:#} (after {tries} tries)")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    admin
        .switchover(proto::SwitchRequest {
            requested_by: "tests/partition.rs".into(),
            wait,
            timeout_ms: timeout.as_millis() as u64,
            ..switch_request(to, format!("partition test: to {to}"))
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_string())
}

/// Waits until every LB serves `setup` and key pairs match again; returns
/// the time that took.
async fn recovers(lab: &Lab, traffic: &Traffic, setup: Setup, bound: Duration) -> Duration {
    let start = Instant::now();
    lab.wait_all_lbs(LbTarget::Serve(setup), bound)
        .await
        .unwrap_or_else(|e| panic!("{e}; logs in {}", lab.dir.display()));
    traffic
        .wait_for_more_matched(5, bound.saturating_sub(start.elapsed()))
        .await
        .unwrap_or_else(|e| panic!("{e}; logs in {}", lab.dir.display()));
    start.elapsed()
}

/// Cuts member `victim` from etcd and from member `lead`, both ways; the
/// faults heal when the guards drop.
fn isolate(net: &LabNet, victim: usize, lead: usize) -> (NetFaultGuard, NetFaultGuard) {
    (
        net.cut_from_etcd(victim).unwrap(),
        net.cut(Node::Member(victim), Node::Member(lead)).unwrap(),
    )
}

fn finish(traffic_report: lockstep_testkit::traffic::TrafficReport, sampler: Sampler) {
    println!("{traffic_report}");
    sampler.finish();
    assert_eq!(
        traffic_report.mismatched, 0,
        "mismatched key pairs: {traffic_report}"
    );
}

// ---------------------------------------------------------------------------
// The lab network itself, without a lab

mod raw {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::path::PathBuf;

    /// Runs `f` on a thread inside `netns` (setns affects only that thread;
    /// sockets it makes stay in the namespace).
    pub fn in_ns<T: Send + 'static>(
        netns: Option<PathBuf>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            if let Some(path) = netns {
                let ns = std::fs::File::open(&path).expect("open netns");
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            }
            f()
        })
        .join()
        .expect("netns thread")
    }

    pub struct Ends {
        pub net: LabNet,
        /// A listening TCP socket and a UDP socket per node.
        pub tcp: Vec<(Node, SocketAddr, TcpListener)>,
        pub udp: Vec<(Node, UdpSocket)>,
    }

    impl Ends {
        pub fn path(&self, node: Node) -> Option<PathBuf> {
            match node {
                Node::Member(i) => Some(self.net.member(i).unwrap().netns_path()),
                _ => None,
            }
        }

        pub fn new(net: LabNet) -> Ends {
            let mut nodes = vec![Node::Host, Node::Etcd];
            nodes.extend((0..net.members().len()).map(Node::Member));
            let mut ends = Ends {
                net,
                tcp: Vec::new(),
                udp: Vec::new(),
            };
            for node in nodes {
                let ip = ends.net.ip(node).unwrap();
                let (l, u) = in_ns(ends.path(node), move || {
                    (
                        TcpListener::bind((ip, 0)).expect("bind tcp"),
                        UdpSocket::bind((ip, 0)).expect("bind udp"),
                    )
                });
                u.set_nonblocking(true).unwrap();
                ends.tcp.push((node, l.local_addr().unwrap(), l));
                ends.udp.push((node, u));
            }
            ends
        }

        /// How long a TCP connect from `from` to `to` took, if it worked
        /// within 600 ms.
        pub fn connect(&self, from: Node, to: Node) -> Option<Duration> {
            let addr = self.tcp.iter().find(|(n, _, _)| *n == to).unwrap().1;
            in_ns(self.path(from), move || {
                let t = Instant::now();
                TcpStream::connect_timeout(&addr, Duration::from_millis(600))
                    .ok()
                    .map(|_| t.elapsed())
            })
        }

        /// How many of `n` datagrams from `from` reached `to`.
        pub fn datagrams(&self, from: Node, to: Node, n: usize) -> usize {
            let rx = &self.udp.iter().find(|(node, _)| *node == to).unwrap().1;
            let mut buf = [0u8; 16];
            while rx.recv(&mut buf).is_ok() {}
            let dst = rx.local_addr().unwrap();
            // From the node's own address, as its server's replies would be.
            let src = self.net.ip(from).unwrap();
            in_ns(self.path(from), move || {
                let tx = UdpSocket::bind((src, 0)).unwrap();
                for _ in 0..n {
                    let _ = tx.send_to(b"x", dst);
                    // Stay under the receive buffer.
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
            std::thread::sleep(Duration::from_millis(100));
            let mut got = 0;
            while rx.recv(&mut buf).is_ok() {
                got += 1;
            }
            got
        }
    }
}

#[test]
fn lab_network_faults_cut_what_they_say_and_heal() {
    use raw::Ends;
    let (m0, m1) = (Node::Member(0), Node::Member(1));
    let ends = Ends::new(LabNet::create("netns-selftest", 2).expect("lab network"));
    let slot = ends.net.slot();
    println!("lab network: slot {slot}, subnet {}", ends.net.subnet());
    let reach = |from, to| ends.connect(from, to).is_some();
    for (a, b) in [
        (m0, Node::Etcd),
        (m0, Node::Host),
        (m0, m1),
        (Node::Host, m0),
        (m1, m0),
    ] {
        assert!(reach(a, b), "{a} reaches {b} before any fault");
    }

    let cut = ends.net.cut_from_etcd(0).unwrap();
    assert!(!reach(m0, Node::Etcd), "{}", cut.describe());
    assert_eq!(
        ends.datagrams(Node::Etcd, m0, 20),
        0,
        "etcd -> member 0 cut too"
    );
    assert!(reach(m0, Node::Host) && reach(m0, m1) && reach(m1, Node::Etcd));
    cut.heal().unwrap();
    assert!(reach(m0, Node::Etcd), "healed");

    let peers = ends.net.cut_all_peers().unwrap();
    assert!(!reach(m0, m1) && !reach(m1, m0), "{}", peers.describe());
    assert!(reach(m0, Node::Etcd) && reach(m1, Node::Etcd) && reach(Node::Host, m1));
    drop(peers); // dropping heals too
    assert!(reach(m0, m1) && reach(m1, m0));

    let one_way = ends.net.drop_one_way(m0, m1).unwrap();
    assert_eq!(ends.datagrams(m0, m1, 50), 0, "{}", one_way.describe());
    assert_eq!(ends.datagrams(m1, m0, 50), 50, "the other direction passes");
    one_way.heal().unwrap();
    let to_etcd = ends.net.drop_one_way(m1, Node::Etcd).unwrap();
    assert_eq!(ends.datagrams(m1, Node::Etcd, 50), 0);
    assert_eq!(ends.datagrams(Node::Etcd, m1, 50), 50);
    to_etcd.heal().unwrap();

    let lossy = ends.net.one_way_loss(m0, Node::Host, 50.0).unwrap();
    let got = ends.datagrams(m0, Node::Host, 400);
    assert!((120..=280).contains(&got), "50% loss let {got}/400 through");
    assert_eq!(
        ends.datagrams(m0, m1, 50),
        50,
        "other destinations unaffected"
    );
    lossy.heal().unwrap();

    let fast = ends.connect(m0, Node::Host).expect("connect");
    let imp = Impairment {
        delay: Duration::from_millis(100),
        jitter: Duration::ZERO,
        loss_percent: 0.0,
        seed: Some(1),
    };
    let slow = ends.net.slow_link(0, imp).unwrap();
    // The other member and the root namespace are not slowed.
    for (a, b) in [(m1, Node::Etcd), (m1, Node::Host), (Node::Host, m1)] {
        let t = ends
            .connect(a, b)
            .unwrap_or_else(|| panic!("{a} -> {b} with member 0 slowed"));
        assert!(t < Duration::from_millis(50), "{a} -> {b} slowed to {t:?}");
    }
    // The SYN waits on the way out, the SYN-ACK on the way in (plus ARP
    // the first time).
    let t = ends
        .connect(m0, Node::Host)
        .expect("connect over the slow link");
    assert!(t >= Duration::from_millis(190), "slow link took only {t:?}");
    let t1 = ends
        .connect(m1, m0)
        .expect("a peer reaches it over the slow link");
    assert!(t1 >= Duration::from_millis(90), "peer connect took {t1:?}");
    // A cut added while the link is slow applies on the slow path too.
    let cut = ends.net.cut_from_etcd(0).unwrap();
    assert!(!reach(m0, Node::Etcd) && reach(m0, Node::Host));
    cut.heal().unwrap();
    assert!(reach(m0, Node::Etcd));
    slow.heal().unwrap();
    let after = ends.connect(m0, Node::Host).expect("connect after heal");
    println!("connect member 0 -> host: {fast:?} before, {t:?} slowed (100 ms each way), {after:?} after");
    assert!(
        after < Duration::from_millis(100),
        "healed link still slow: {after:?}"
    );

    // Everything goes with the network.
    let ns = ends.net.member(0).unwrap().netns_path();
    drop(ends);
    assert!(!ns.exists(), "{} left behind", ns.display());
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/lsk{slot}")).exists(),
        "bridge left behind"
    );
}

// ---------------------------------------------------------------------------
// (a) A member cut from etcd

/// TTL − margin + D: the longest a member cut from etcd may keep its LB
/// routing (DESIGN §3: it stops answering its LB's checks D before its
/// lease stops being fresh, and blocks the LB itself when it does).
fn cut_bound(t: &Timing) -> Duration {
    t.lease_ttl - t.margin + t.down_detection()
}

/// The leader cut from etcd mid-switch: an isolated member keeps the switch
/// in its drain phase, then the leader is cut too. Both fence (with
/// failsafe too: a drained member has nothing to serve on grants); after
/// the heal a leader finishes or re-decides the switch and the link settles
/// on one setup.
async fn drained_then_everyone_cut(
    lab: &Lab,
    traffic: &Traffic,
    sampler: &Sampler,
    bound: Duration,
) {
    let net = net(lab);
    let lead = leader(lab).await;
    let victim = 1 - lead;
    let isolated = isolate(net, victim, lead);
    let asked = Instant::now();
    let request = switchover(lab, lead, Setup::Warm, false, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let route = lab.store().await.unwrap().snapshot().await.unwrap().route;
    println!(
        "mid-switch (route {:?}): leader {lead} cut from etcd too; request {request:?}",
        route.map(|(r, _)| (r.epoch, r.phase, r.setup))
    );
    let cut_at = Instant::now();
    let cut = net.cut_from_etcd(lead).unwrap();
    fenced_within(lab, sampler, lead, cut_at, bound).await;
    fenced_within(lab, sampler, victim, asked, bound).await;
    drop(isolated);
    cut.heal().unwrap();
    let healed = Instant::now();
    let setup = settled_setup(lab, RECOVERY_BOUND).await;
    let back = recovers(lab, traffic, setup, RECOVERY_BOUND).await;
    println!(
        "  healed: the link settled on {setup} after {:?}; every LB serves it after {back:?}",
        healed.elapsed()
    );
}

/// Cuts `victim` from etcd, waits until its lease has surely expired (while
/// asserting nothing else), heals, and returns when its LB stopped routing
/// for good after the cut (asserted within `bound`) and what it routed to
/// last before.
async fn fenced_within(
    lab: &Lab,
    sampler: &Sampler,
    victim: usize,
    cut_at: Instant,
    bound: Duration,
) -> Duration {
    let t = &lab.options.timing;
    tokio::time::sleep(t.lease_ttl + Duration::from_secs(1)).await;
    let (at, last) = sampler
        .blocked_for_good(victim, cut_at, Instant::now())
        .unwrap_or_else(|| {
            panic!(
                "member {victim}'s LB still routes {:?} after the cut; logs in {}",
                Instant::now() - cut_at,
                lab.dir.display()
            )
        });
    let took = at.saturating_duration_since(cut_at);
    let before = last.map_or("already blocked".to_string(), |s| format!("{s:?} before"));
    println!(
        "  member {victim}'s LB stopped routing for good {took:?} after the cut ({before}; bound {bound:?})"
    );
    assert!(
        took <= bound,
        "member {victim}'s LB routed {took:?} after the cut (bound {bound:?})"
    );
    took
}

/// Waits until the link has settled with every member registered, and
/// returns its setup.
async fn settled_setup(lab: &Lab, bound: Duration) -> Setup {
    let store = lab.store().await.expect("store");
    let start = Instant::now();
    loop {
        if let Ok(snap) = store.snapshot().await {
            if snap.settled() && snap.members.len() == lab.sidecars.len() {
                if let Some((route, _)) = snap.route {
                    return route.setup;
                }
            }
        }
        assert!(
            start.elapsed() < bound,
            "link not settled within {bound:?}; logs in {}",
            lab.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_member_cut_from_etcd_stops_routing_within_its_lease_budget() {
    rt().block_on(async {
        let timing = Timing::default();
        let bound = cut_bound(&timing);
        let (lab, traffic, sampler) = start("part-etcd", options(timing.clone())).await;
        let net = net(&lab);

        // At rest: the leader is cut. Its LB stops routing, the other
        // member keeps serving and takes over the leadership.
        let victim = leader(&lab).await;
        let other = 1 - victim;
        println!("at rest: leader {victim} cut from etcd");
        let cut_at = Instant::now();
        let cut = net.cut_from_etcd(victim).unwrap();
        fenced_within(&lab, &sampler, victim, cut_at, bound).await;
        assert!(
            sampler.always_served(other, Setup::Hot, cut_at),
            "the member that kept etcd stopped serving"
        );
        assert_eq!(leader(&lab).await, other, "leadership moved to the reachable member");
        cut.heal().unwrap();
        let back = recovers(&lab, &traffic, Setup::Hot, RECOVERY_BOUND).await;
        println!("  healed: every LB serves hot again after {back:?} (bound {RECOVERY_BOUND:?})");

        // During a switchover: a member that does not lead is cut, then
        // the switch starts. The leader still reaches it over gRPC, so the
        // switch may complete and the member may serve the new setup until
        // its lease runs out; it must stop within the bound either way.
        let lead = leader(&lab).await;
        let victim = 1 - lead;
        let cut_at = Instant::now();
        let cut = net.cut_from_etcd(victim).unwrap();
        let reply = switchover(&lab, lead, Setup::Warm, true, Duration::from_secs(8)).await;
        println!("during a switchover: member {victim} cut from etcd, switch to warm: {reply:?}");
        fenced_within(&lab, &sampler, victim, cut_at, bound).await;
        cut.heal().unwrap();
        let back = recovers(&lab, &traffic, Setup::Warm, RECOVERY_BOUND).await;
        println!("  healed: every LB serves warm after {back:?}");

        // L1: a member cut from etcd and from its peers holds a switch up
        // no longer than its lease TTL (then its key is gone).
        let lead = leader(&lab).await;
        let victim = 1 - lead;
        let isolated = isolate(net, victim, lead);
        let asked = Instant::now();
        let reply = switchover(&lab, lead, Setup::Hot, true, Duration::from_secs(10)).await;
        let took = asked.elapsed();
        println!("member {victim} isolated (etcd and peers): switch to hot {reply:?} after {took:?} (TTL {:?})", timing.lease_ttl);
        assert!(reply.is_ok_and(|r| r.completed), "an isolated member held the switch up");
        assert!(took <= timing.lease_ttl + Duration::from_secs(1), "the switch waited {took:?}");
        fenced_within(&lab, &sampler, victim, asked, bound).await;
        drop(isolated);
        let back = recovers(&lab, &traffic, Setup::Hot, RECOVERY_BOUND).await;
        println!("  healed: every LB serves hot after {back:?}");

        // The leader cut from etcd mid-switch: an isolated member keeps the
        // switch in its drain phase, then the leader is cut too. Both
        // fence; after the heal a leader finishes or re-decides the switch
        // and the link settles on one setup.
        drained_then_everyone_cut(&lab, &traffic, &sampler, bound).await;
        for h in lab.history(10).await.expect("history").records {
            let to = PSetup::try_from(h.to).map_or("?", |s| s.as_str_name());
            println!(
                "  history: epoch {} {} to {to}: {} after {} ms, fenced {:?}",
                h.epoch, h.kind, h.outcome, h.total_ms, h.fenced_members
            );
        }

        finish(traffic.stop().await, sampler);
    });
}

/// The same cuts with failsafe on: a member cut from etcd alone gets no
/// grant (its peer reaches etcd) and fences as before while the other goes
/// on; a switch left in its drain when every member loses etcd leaves
/// nobody serving (a drained member has nothing to serve on grants) until
/// etcd is back, and never two setups.
#[test]
fn with_failsafe_a_member_cut_from_etcd_still_fences_and_a_drain_stays_drained() {
    rt().block_on(async {
        let timing = Timing::default().with_failsafe();
        let bound = cut_bound(&timing);
        let (lab, traffic, sampler) = start("part-failsafe", options(timing.clone())).await;
        let net = net(&lab);

        let lead = leader(&lab).await;
        let victim = 1 - lead;
        let cut_at = Instant::now();
        let cut = net.cut_from_etcd(victim).unwrap();
        fenced_within(&lab, &sampler, victim, cut_at, bound).await;
        assert!(
            sampler.always_served(lead, Setup::Hot, cut_at),
            "the member that kept etcd stopped serving"
        );
        cut.heal().unwrap();
        let back = recovers(&lab, &traffic, Setup::Hot, RECOVERY_BOUND).await;
        println!("failsafe: member {victim} cut from etcd alone fenced; healed after {back:?}");

        drained_then_everyone_cut(&lab, &traffic, &sampler, bound).await;
        finish(traffic.stop().await, sampler);
    });
}

// ---------------------------------------------------------------------------
// (b) Sidecars cut from each other, not from etcd

#[test]
fn sidecars_cut_from_each_other_switch_only_safely() {
    rt().block_on(async {
        let (lab, traffic, sampler) = start("part-peers", options(Timing::default())).await;
        let net = net(&lab);
        let lead = leader(&lab).await;
        let cut = net.cut_all_peers().unwrap();
        // Drain and Serve pushes are lost; the members still see the route
        // in etcd and record their acks there, which the leader reads.
        let mut to = Setup::Warm;
        let mut took = Vec::new();
        for _ in 0..4 {
            let asked = Instant::now();
            let reply = switchover(&lab, lead, to, true, SWITCH_BOUND).await;
            took.push(asked.elapsed());
            assert!(
                reply.as_ref().is_ok_and(|r| r.completed),
                "switch to {to} with peers cut: {reply:?}; logs in {}",
                lab.dir.display()
            );
            lab.wait_all_lbs(LbTarget::Serve(to), Duration::from_secs(1))
                .await
                .expect("a completed switch serves the target everywhere");
            traffic
                .wait_for_more_matched(3, Duration::from_secs(5))
                .await
                .expect("key pairs flow");
            to = to.other();
        }
        println!("peers cut: 4 switches completed over etcd alone in {took:?}");
        // Long enough for the leader's pushes to time out and be resent.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cut.heal().unwrap();
        let asked = Instant::now();
        let reply = switchover(&lab, lead, to, true, SWITCH_BOUND).await;
        assert!(reply.is_ok_and(|r| r.completed), "switch after the heal");
        let back = recovers(&lab, &traffic, to, RECOVERY_BOUND).await;
        println!(
            "healed: a switch to {to} completed in {:?}; key pairs flow after {back:?}",
            asked.elapsed()
        );
        finish(traffic.stop().await, sampler);
    });
}

// ---------------------------------------------------------------------------
// (c) One-way loss between the leader and a member

#[test]
fn one_way_loss_between_leader_and_member_never_mismatches() {
    rt().block_on(async {
        let (lab, traffic, sampler) = start("part-oneway", options(Timing::default())).await;
        let net = net(&lab);
        let lead = leader(&lab).await;
        let member = 1 - lead;
        let mut to = Setup::Warm;
        for (from, towards, percent) in [
            (lead, member, 100.0),
            (member, lead, 100.0),
            (lead, member, 50.0),
            (member, lead, 50.0),
        ] {
            let fault = net
                .one_way_loss(Node::Member(from), Node::Member(towards), percent)
                .unwrap();
            let mut took = Vec::new();
            for _ in 0..2 {
                let asked = Instant::now();
                let reply = switchover(&lab, lead, to, true, SWITCH_BOUND).await;
                took.push(asked.elapsed());
                assert!(
                    reply.as_ref().is_ok_and(|r| r.completed),
                    "{}: switch to {to} did not complete within {SWITCH_BOUND:?}: {reply:?}; logs in {}",
                    fault.describe(),
                    lab.dir.display()
                );
                lab.wait_all_lbs(LbTarget::Serve(to), Duration::from_secs(1))
                    .await
                    .unwrap();
                traffic
                    .wait_for_more_matched(3, Duration::from_secs(5))
                    .await
                    .expect("key pairs flow");
                to = to.other();
            }
            // Pushes and their resends time out meanwhile.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            println!("{}: 2 switches completed in {took:?}", fault.describe());
            fault.heal().unwrap();
            let back = recovers(&lab, &traffic, to.other(), RECOVERY_BOUND).await;
            println!("  healed: key pairs on {} after {back:?}", to.other());
        }
        finish(traffic.stop().await, sampler);
    });
}

// ---------------------------------------------------------------------------
// (d) A slow, lossy link

#[test]
fn switchovers_over_a_slow_lossy_link_never_mismatch() {
    rt().block_on(async {
        let timing = Timing {
            // Probes cross the slow link: give them time, so health stays
            // up and switchovers are not refused for it.
            probe_interval: Duration::from_millis(1500),
            probe_fall: 3,
            // Only the switches this test asks for.
            failover_enabled: false,
            ..Timing::default()
        };
        let lab = Lab::start("part-slow", options(timing)).await.expect("lab");
        let mut config = lab.traffic_config();
        // A pair crosses the slow link several times.
        config.request_timeout = Duration::from_secs(5);
        let traffic = Traffic::start(config);
        traffic
            .wait_for_matched(10, Duration::from_secs(10))
            .await
            .expect("traffic");
        let sampler = Sampler::start(&lab);
        let net = net(&lab);
        let imp = Impairment {
            delay: Duration::from_millis(125),
            jitter: Duration::from_millis(75),
            loss_percent: 5.0,
            seed: Some(4),
        };
        let lead = leader(&lab).await;
        let mut to = Setup::Warm;
        let mut took = Vec::new();
        for slowed in [1 - lead, lead] {
            let fault = net.slow_link(slowed, imp).unwrap();
            println!("{}", fault.describe());
            for _ in 0..2 {
                let asked = Instant::now();
                let reply = switchover(&lab, lead, to, true, Duration::from_secs(20)).await;
                took.push(asked.elapsed());
                assert!(
                    reply.as_ref().is_ok_and(|r| r.completed),
                    "switch to {to} over a slow link: {reply:?}; logs in {}",
                    lab.dir.display()
                );
                traffic
                    .wait_for_more_matched(3, Duration::from_secs(10))
                    .await
                    .expect("key pairs flow over the slow link");
                to = to.other();
            }
            fault.heal().unwrap();
        }
        println!("switch times over the slow link: {took:?}");
        let back = recovers(&lab, &traffic, to.other(), RECOVERY_BOUND).await;
        println!("healed: key pairs flow within {back:?}");
        finish(traffic.stop().await, sampler);
    });
}
