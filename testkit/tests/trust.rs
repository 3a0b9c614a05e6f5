//! Trust on the real stack (issue 10): mutual TLS and per-call roles on
//! gRPC, certificate rotation without a restart, bounded Admin input, the
//! HTTP check endpoint under idle connections, and etcd over TLS with
//! RBAC.

use lockstep::lb::LoadBalancer;
use lockstep::proto::{self, Setup as PSetup};
use lockstep::protocol::{LbTarget, Setup};
use lockstep::tls::TlsFiles;
use lockstep_testkit::lab::{Lab, LabOptions};
use lockstep_testkit::pki::{member_uri, OPERATOR, VIEWER};
use lockstep_testkit::rt;
use lockstep_testkit::switch_request;
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

fn switch(to: Setup, reason: &str, by: &str) -> proto::SwitchRequest {
    proto::SwitchRequest {
        requested_by: by.into(),
        ..switch_request(to, reason)
    }
}

/// A TLS client config that trusts the lab's CA and presents no
/// certificate.
fn anonymous(lab: &Lab) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(lab.pki.ca()).expect("CA");
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.expect("pem")).expect("root");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[test]
fn grpc_needs_a_certificate_and_the_role_of_each_call() {
    rt().block_on(async {
        let lab = Lab::start("trust-roles", LabOptions::default())
            .await
            .expect("lab");
        let endpoint = lab.sidecars[0].endpoint();

        // No certificate: plaintext gets nowhere, and TLS without a client
        // certificate is refused at the handshake.
        let plain = lab.sidecars[0].admin_as(None).await;
        let refused = match plain {
            Err(_) => true,
            Ok(mut c) => c.status(proto::StatusRequest {}).await.is_err(),
        };
        assert!(refused, "a plaintext client must get no answer");
        let connector =
            lockstep::tls::client::Connector::new(anonymous(&lab), Duration::from_secs(2));
        let anon = lockstep::tls::client::endpoint(&endpoint)
            .expect("endpoint")
            .connect_with_connector(connector)
            .await;
        let answered = match anon {
            Err(_) => false,
            Ok(ch) => proto::admin_client::AdminClient::new(ch)
                .status(proto::StatusRequest {})
                .await
                .is_ok(),
        };
        assert!(!answered, "a client without a certificate must be refused");

        // A viewer sees status but cannot switch.
        let mut viewer = lab.sidecars[0]
            .admin_as(Some(&lab.viewer))
            .await
            .expect("viewer");
        let status = viewer
            .status(proto::StatusRequest {})
            .await
            .expect("viewer status")
            .into_inner();
        assert!(!status.insecure, "the lab runs mutual TLS");
        let epoch_before = status.route.as_ref().expect("route").epoch;
        let e = viewer
            .switchover(switch(Setup::Warm, "viewer tries", "v"))
            .await
            .expect_err("a viewer cannot switch");
        assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
        assert!(
            e.message().contains("needs role operator"),
            "{}",
            e.message()
        );
        assert!(e.message().contains(VIEWER), "{}", e.message());
        let e = viewer
            .pause(proto::PauseRequest {
                reason: "no".into(),
                requested_by: String::new(),
            })
            .await
            .expect_err("a viewer cannot pause");
        assert_eq!(e.code(), Code::PermissionDenied);

        // A peer certificate of another link (same CA): refused on every
        // service of this link.
        let stranger = lab
            .pki
            .issue("stranger", &member_uri("some-other-link", "alice-0"), &[])
            .expect("issue");
        let mut peer = lab
            .peer_as(1, Some(&stranger))
            .await
            .expect("connects (same CA)");
        let e = peer
            .drain(proto::DrainRequest {
                link: lab.link.clone(),
                epoch: 1_000_000,
                token: 1,
                setup: PSetup::Warm as i32,
            })
            .await
            .expect_err("another link's peer must be refused");
        assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
        assert!(e.message().contains("needs role peer"), "{}", e.message());
        let e = lab.sidecars[1]
            .admin_as(Some(&stranger))
            .await
            .expect("connects")
            .status(proto::StatusRequest {})
            .await
            .expect_err("a peer of another link is no viewer");
        assert_eq!(e.code(), Code::PermissionDenied);
        // An operator is no peer either.
        let e = lab
            .peer_as(1, Some(&lab.operator))
            .await
            .expect("connects")
            .get_state(proto::GetStateRequest {})
            .await
            .expect_err("an operator cannot push");
        assert_eq!(e.code(), Code::PermissionDenied);
        // Nothing moved.
        for lb in &lab.lbs {
            assert_eq!(
                lb.adapter().observe().await.expect("observe").target,
                LbTarget::Serve(Setup::Hot)
            );
        }

        // Bounded input: a 10 KiB reason and one with an escape sequence
        // are refused and change nothing.
        let mut admin = lab.admin(0).await.expect("operator");
        for reason in [
            "x".repeat(10 * 1024),
            "maintenance \u{1b}[2J\u{1b}[H all good".to_string(),
        ] {
            let e = admin
                .switchover(switch(Setup::Warm, &reason, "tester"))
                .await
                .expect_err("refused");
            assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
            let e = admin
                .pause(proto::PauseRequest {
                    reason: reason.clone(),
                    requested_by: String::new(),
                })
                .await
                .expect_err("refused");
            assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        }
        let status = admin
            .status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert_eq!(
            status.route.as_ref().expect("route").epoch,
            epoch_before,
            "nothing moved"
        );
        assert!(!status.paused && status.pending.is_none(), "nothing stored");

        // An operator can switch, and the record carries its identity; the
        // free-text --by is only a note.
        let reply = admin
            .switchover(switch(Setup::Warm, "patching hot", "alice@laptop"))
            .await
            .expect("an operator switches")
            .into_inner();
        assert!(reply.completed);
        let status = admin
            .status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        let route = status.route.expect("route");
        assert_eq!(route.requested_by, OPERATOR);
        assert_eq!(
            route.reason, "patching hot",
            "the note stays out of the reason"
        );
        let r = history_record(&mut admin, reply.epoch).await;
        assert_eq!(r.kind, "switchover", "{r:?}");
        assert_eq!(r.requested_by, OPERATOR, "{r:?}");
        assert_eq!(r.reason, "patching hot", "{r:?}");
        assert_eq!(r.by_note, "alice@laptop", "{r:?}");

        // A failover records the identity the same way.
        let reply = admin
            .failover(switch(Setup::Hot, "warm KME flapping", "bob@laptop"))
            .await
            .expect("an operator fails over")
            .into_inner();
        assert!(reply.completed);
        let r = history_record(&mut admin, reply.epoch).await;
        assert_eq!(r.kind, "failover", "{r:?}");
        assert_eq!(r.requested_by, OPERATOR, "{r:?}");
        assert_eq!(r.reason, "warm KME flapping", "{r:?}");
        assert_eq!(r.by_note, "bob@laptop", "{r:?}");

        // Pause records the identity too.
        admin
            .pause(proto::PauseRequest {
                reason: "window".into(),
                requested_by: String::new(),
            })
            .await
            .expect("pause");
        let status = admin
            .status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert!(
            status.paused_reason.contains(OPERATOR),
            "{}",
            status.paused_reason
        );

        // While paused only a forced failover (--ignore-health) moves the
        // link, and its record names the identity too.
        let e = admin
            .failover(switch(Setup::Warm, "not forced", "carol@phone"))
            .await
            .expect_err("paused");
        assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
        let reply = admin
            .failover(proto::SwitchRequest {
                force: true,
                ..switch(Setup::Warm, "hot KME down, paused", "carol@phone")
            })
            .await
            .expect("a forced failover while paused")
            .into_inner();
        assert!(reply.completed);
        let r = history_record(&mut admin, reply.epoch).await;
        assert_eq!(r.kind, "failover", "{r:?}");
        assert_eq!(r.requested_by, OPERATOR, "{r:?}");
        assert_eq!(r.reason, "hot KME down, paused", "{r:?}");
        assert_eq!(r.by_note, "carol@phone", "{r:?}");
    });
}

/// The history record of the switch at `epoch`, once the leader wrote it
/// (within 5 s).
async fn history_record(
    admin: &mut proto::admin_client::AdminClient<tonic::transport::Channel>,
    epoch: u64,
) -> proto::HistoryRecord {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let h = admin
            .history(proto::HistoryRequest {
                limit: 5,
                ..Default::default()
            })
            .await
            .expect("history")
            .into_inner();
        if let Some(r) = h.records.into_iter().find(|r| r.epoch == epoch) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no history record for epoch {epoch}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leaf certificate a sidecar presents to a new connection now.
async fn served_certificate(lab: &Lab, i: usize) -> Vec<u8> {
    let material = lockstep::tls::Reloading::load(lab.operator.clone()).expect("operator");
    let config =
        lockstep::tls::client_config(&material, lockstep::tls::ServerCheck::Name).expect("config");
    let tcp = tokio::net::TcpStream::connect(lab.sidecars[i].spec.grpc)
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certificate")[0]
        .as_ref()
        .to_vec()
}

fn pem_der(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .expect("pem")
        .as_ref()
        .to_vec()
}

#[test]
fn a_rotated_certificate_is_picked_up_and_the_link_keeps_serving() {
    rt().block_on(async {
        let lab = Lab::start("trust-rotate", LabOptions::default())
            .await
            .expect("lab");
        let traffic = lab.start_traffic(20).await.expect("traffic");
        let files: TlsFiles = lab.sidecars[0]
            .spec
            .tls
            .as_ref()
            .expect("tls")
            .files
            .clone();
        assert_eq!(served_certificate(&lab, 0).await, pem_der(&files.cert));
        // A connection made before the rotation.
        let mut old = lab.admin(0).await.expect("admin");
        old.status(proto::StatusRequest {})
            .await
            .expect("status before");

        // cert-manager's rotation: a new key and certificate, same identity.
        let id = &lab.sidecars[0].spec.member_id;
        let (cert, key) = lab
            .pki
            .issue_pem(
                id,
                &member_uri(&lab.link, id),
                &[std::net::IpAddr::from([127, 0, 0, 1])],
                (-1, 30),
            )
            .expect("issue");
        std::fs::write(&files.key, key).expect("key");
        std::fs::write(&files.cert, &cert).expect("cert");
        let new_der = pem_der(&files.cert);
        let deadline = Instant::now() + Duration::from_secs(10);
        while served_certificate(&lab, 0).await != new_der {
            assert!(
                Instant::now() < deadline,
                "the new certificate was not picked up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The old connection still answers, the same process serves.
        old.status(proto::StatusRequest {})
            .await
            .expect("status on the old connection");
        // Switches go on across members with rotated certificates.
        for to in [Setup::Warm, Setup::Hot] {
            let reply = old
                .switchover(switch(to, "after rotation", ""))
                .await
                .expect("switch")
                .into_inner();
            assert!(reply.completed);
        }
        let report = traffic.stop_and_assert_no_mismatch().await;
        assert!(report.matched > 20, "{report}");
        assert!(lab.sidecars[0].guard.pid().is_some());
    });
}

/// A sidecar dialing member bob-0 accepts only a certificate that names
/// bob-0: another holder of a peer certificate answering at bob-0's address
/// (here bob-0 restarted with files naming alice-0) cannot answer for it.
/// alice-0's status then has bob-0 only from its etcd record; once bob-0
/// runs with its own certificate again, alice-0 reaches it live. Switches
/// go on meanwhile (bob-0's acks also come through its etcd record).
#[test]
fn a_member_is_answered_only_by_its_own_certificate() {
    rt().block_on(async {
        let mut lab = Lab::start("trust-member-identity", LabOptions::default())
            .await
            .expect("lab");
        let traffic = lab.start_traffic(20).await.expect("traffic");
        let live = |s: &proto::StatusReply| {
            let bob = s.members.iter().find(|m| m.id == "bob-0").expect("bob-0");
            bob.health
                .as_ref()
                .is_none_or(|h| !h.detail.contains("did not answer"))
        };
        let status = lab.status().await.expect("status");
        assert!(live(&status), "bob-0 answers alice-0: {status:?}");

        let files: TlsFiles = lab.sidecars[1]
            .spec
            .tls
            .as_ref()
            .expect("tls")
            .files
            .clone();
        let (own_cert, own_key) = (
            std::fs::read(&files.cert).expect("cert"),
            std::fs::read(&files.key).expect("key"),
        );
        let (cert, key) = lab
            .pki
            .issue_pem(
                "alice-0",
                &member_uri(&lab.link, "alice-0"),
                &[std::net::IpAddr::from([127, 0, 0, 1])],
                (-1, 30),
            )
            .expect("issue");
        std::fs::write(&files.key, key).expect("key");
        std::fs::write(&files.cert, &cert).expect("cert");
        // The impostor takes bob-0's address: a new process, so alice-0's
        // channel to it handshakes again.
        let wrong = pem_der(&files.cert);
        tokio::task::block_in_place(|| lab.sidecars[1].restart()).expect("restart bob-0");
        assert_eq!(served_certificate(&lab, 1).await, wrong);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = lab.status().await.expect("status");
            if !live(&status) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "alice-0 takes answers for bob-0 from a certificate naming alice-0"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let log = std::fs::read_to_string(&lab.sidecars[0].log).expect("log");
        assert!(
            log.contains("answering for member bob-0 does not name it"),
            "alice-0 does not say why it refused bob-0's certificate"
        );

        // Switches still complete, and nothing mismatches.
        let mut admin = lab.admin(0).await.expect("admin");
        let reply = admin
            .switchover(switch(Setup::Warm, "impostor at bob-0", ""))
            .await
            .expect("switch")
            .into_inner();
        assert!(reply.completed);

        std::fs::write(&files.key, own_key).expect("key");
        std::fs::write(&files.cert, own_cert).expect("cert");
        tokio::task::block_in_place(|| lab.sidecars[1].restart()).expect("restart bob-0");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !live(&lab.status().await.expect("status")) {
            assert!(Instant::now() < deadline, "bob-0 not reached live again");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let report = traffic.stop_and_assert_no_mismatch().await;
        assert!(report.matched > 20, "{report}");
    });
}

#[test]
fn idle_http_connections_do_not_take_the_serving_server_down() {
    rt().block_on(async {
        let lab = Lab::start("trust-idle", LabOptions::default())
            .await
            .expect("lab");
        let traffic = lab.start_traffic(20).await.expect("traffic");
        let before = traffic.snapshot();
        let http = lab.sidecars[0].spec.http;
        // Fewer open files allowed than the idle connections need (as in a
        // container with a low limit): a sidecar that kept them all would
        // run out and stop accepting the LB's checks.
        let pid = lab.sidecars[0].guard.pid().expect("sidecar pid");
        let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fds")
            .count();
        let limit = open_fds + 500;
        let out = std::process::Command::new("prlimit")
            .args([
                "--pid",
                &pid.to_string(),
                &format!("--nofile={limit}:{limit}"),
            ])
            .output()
            .expect("prlimit (util-linux)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut idle = Vec::new();
        for _ in 0..1000 {
            // The sidecar closes the oldest at its cap; a connect that
            // stalls (the listener's backlog full) counts as refused.
            let connect = tokio::net::TcpStream::connect(http);
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
                idle.push(s);
            }
        }
        // Longer than the header timeout and many check intervals: the LB
        // must keep routing to hot all along.
        let lb = lab.lbs[0].adapter();
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let seen = lb.observe().await.expect("observe").target;
            assert_eq!(
                seen,
                LbTarget::Serve(Setup::Hot),
                "Alice's LB stopped serving"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(idle);
        let report = traffic.stop_and_assert_no_mismatch().await;
        assert_eq!(
            report.failed, before.failed,
            "key pairs failed while idle connections were open: {report}"
        );
        assert!(report.matched > before.matched + 20, "{report}");
    });
}

#[test]
fn etcd_over_tls_with_client_certificates_and_rbac() {
    use lockstep::store::Store;
    use lockstep_testkit::lab::process::{find_program, free_port, wait_for_tcp, ChildGuard};
    use lockstep_testkit::lab::sidecar::{SidecarProcess, SidecarSpec, SidecarTls};
    use lockstep_testkit::pki::{roles_toml, Pki};
    use std::net::{IpAddr, SocketAddr};
    use std::process::Command;

    rt().block_on(async {
        let dir = lockstep_testkit::lab::link::lab_dir("trust-etcd").expect("dir");
        let link = "lab-trust-etcd";
        let pki = Pki::create(&dir.join("tls"), "etcd CA").expect("pki");
        let localhost = IpAddr::from([127, 0, 0, 1]);
        let server = pki
            .issue("etcd-server", "", &[localhost])
            .expect("server cert");
        // etcd maps a client certificate's CN to a user: "root" here.
        let root = pki.issue("root", "", &[]).expect("root cert");
        let client = pki
            .issue("lockstep-etcd-client", "", &[])
            .expect("client cert");
        let (client_port, peer_port) = (free_port().expect("port"), free_port().expect("port"));
        let data = tempfile::tempdir().expect("data");
        let client_url = format!("https://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(find_program("etcd").expect("etcd"));
        cmd.args(["--name", "e0", "--data-dir"])
            .arg(data.path())
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args([
                "--initial-cluster",
                &format!("e0={peer_url}"),
                "--log-level",
                "warn",
            ])
            .arg("--cert-file")
            .arg(&server.cert)
            .arg("--key-file")
            .arg(&server.key)
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(pki.ca());
        let _etcd = ChildGuard::spawn("etcd-tls", cmd, &dir.join("etcd.log")).expect("etcd");
        wait_for_tcp(
            SocketAddr::from(([127, 0, 0, 1], client_port)),
            Duration::from_secs(20),
        )
        .expect("etcd up");
        let etcdctl = |args: &[&str]| {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let out = Command::new(find_program("etcdctl").expect("etcdctl"))
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", &client_url, "--cacert"])
                    .arg(pki.ca())
                    .arg("--cert")
                    .arg(&root.cert)
                    .arg("--key")
                    .arg(&root.key)
                    .args(args)
                    .output()
                    .expect("etcdctl");
                if out.status.success() {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcdctl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        // The minimal role of docs/security.md: readwrite on the link's
        // prefix, nothing else.
        let prefix = format!("/lockstep/{link}/");
        etcdctl(&["user", "add", "root", "--new-user-password", "rootpw"]);
        etcdctl(&["user", "grant-role", "root", "root"]);
        etcdctl(&["role", "add", "lockstep-link"]);
        etcdctl(&[
            "role",
            "grant-permission",
            "lockstep-link",
            "--prefix=true",
            "readwrite",
            &prefix,
        ]);
        etcdctl(&["user", "add", "lockstep", "--new-user-password", "s3cret"]);
        etcdctl(&["user", "grant-role", "lockstep", "lockstep-link"]);
        etcdctl(&["auth", "enable"]);

        let password = dir.join("etcd-password");
        std::fs::write(&password, "s3cret\n").expect("password file");
        let wrong = dir.join("etcd-wrong-password");
        std::fs::write(&wrong, "guess\n").expect("password file");
        let config = |password_file: &std::path::Path| lockstep::config::EtcdConfig {
            endpoints: vec![client_url.clone()],
            ca: Some(pki.ca()),
            cert: Some(client.cert.clone()),
            key: Some(client.key.clone()),
            user: Some("lockstep".into()),
            password_file: Some(password_file.to_path_buf()),
            ..lockstep::config::EtcdConfig::default()
        };

        // The right credentials: the link's keys are readable and writable.
        let store = Store::connect_with(&config(&password), link)
            .await
            .expect("connects");
        store.read_route().await.expect("reads the link");
        // The role stops at the link's prefix.
        let e = Store::connect_with(&config(&password), "another-link")
            .await
            .err()
            .expect("another link's keys are off limits");
        assert!(
            e.to_string()
                .contains("may not use /lockstep/another-link/"),
            "{e}"
        );
        // Wrong password: refused, naming the problem.
        let e = Store::connect_with(&config(&wrong), link)
            .await
            .err()
            .expect("wrong password");
        assert!(e.to_string().contains("wrong user name or password"), "{e}");
        // No client certificate: etcd's --client-cert-auth refuses the TLS.
        let e = Store::connect_with(
            &lockstep::config::EtcdConfig {
                cert: None,
                key: None,
                ..config(&password)
            },
            link,
        )
        .await
        .err()
        .expect("no client certificate");
        assert!(e.to_string().contains("etcd"), "{e}");

        // A sidecar with these settings registers; one with a wrong password
        // does not start and says why.
        let sidecar = |id: &str, password_file: &std::path::Path| {
            let mut spec =
                SidecarSpec::new(link, id, "alice", vec![client_url.clone()]).expect("spec");
            spec.haproxy_socket = dir.join("no-haproxy.sock");
            spec.etcd_extra = format!(
                "ca = {:?}\ncert = {:?}\nkey = {:?}\nuser = \"lockstep\"\npassword_file = {:?}\n",
                pki.ca(),
                client.cert,
                client.key,
                password_file
            );
            spec.tls = Some(SidecarTls {
                files: pki
                    .issue(id, &member_uri(link, id), &[localhost])
                    .expect("issue"),
                roles_toml: roles_toml(link),
                reload_interval: Duration::from_secs(1),
            });
            SidecarProcess::spawn(spec, &dir)
        };
        let _good =
            sidecar("alice-0", &password).expect("a sidecar with the right credentials starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !store
            .snapshot()
            .await
            .expect("snapshot")
            .members
            .iter()
            .any(|m| m.id == "alice-0")
        {
            assert!(
                Instant::now() < deadline,
                "the sidecar did not register over TLS with auth"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            sidecar("alice-1", &wrong).is_err(),
            "a wrong password must stop the start-up"
        );
        let log = std::fs::read_to_string(dir.join("alice-1.log")).expect("log");
        assert!(
            log.contains("etcd refused user \"lockstep\": wrong user name or password"),
            "{log}"
        );
    });
}

#[test]
fn the_leader_keeps_only_the_newest_history_records() {
    rt().block_on(async {
        let options = LabOptions {
            sidecar_env: vec![("LOCKSTEP_ADMIN__HISTORY_KEEP".into(), "3".into())],
            probes: false,
            ..LabOptions::default()
        };
        let lab = Lab::start("trust-history", options).await.expect("lab");
        let mut admin = lab.admin(0).await.expect("admin");
        let mut to = Setup::Warm;
        let mut last = 0;
        for i in 0..6 {
            let mut req = switch(to, &format!("switch {i}"), "");
            req.force = true;
            last = admin
                .failover(req)
                .await
                .expect("switch")
                .into_inner()
                .epoch;
            to = to.other();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let h = admin
                .history(proto::HistoryRequest {
                    limit: 100,
                    ..Default::default()
                })
                .await
                .expect("history")
                .into_inner();
            let epochs: Vec<u64> = h.records.iter().map(|r| r.epoch).collect();
            if epochs.len() == 3 && epochs[0] == last {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "history not trimmed to the newest 3: {epochs:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// `grpc.call_timeout` on a real listener. A switchover whose wait would
/// outlive the bound is refused up front (the sidecar would cut the call
/// before it could withdraw an untaken request), and nothing moves; one
/// within it answers. The bound itself cuts a call whose dependency hangs
/// (etcd frozen, a history read waiting for `etcd.request_timeout` of 3 s)
/// at 2 s with tonic's `CANCELLED` "Timeout expired", and gives its Admin
/// slot back (`grpc.max_admin_calls = 1`: the next call would be
/// `TOO_BUSY` otherwise).
#[test]
fn a_call_longer_than_the_call_timeout_is_cut_and_frees_its_slot() {
    rt().block_on(async {
        let call_timeout = Duration::from_secs(2);
        let options = LabOptions {
            sidecar_env: vec![
                ("LOCKSTEP_GRPC__CALL_TIMEOUT".into(), "2s".into()),
                // grpc.call_timeout must exceed it.
                ("LOCKSTEP_ADMIN__SWITCH_TIMEOUT".into(), "1500ms".into()),
                ("LOCKSTEP_GRPC__MAX_ADMIN_CALLS".into(), "1".into()),
                ("LOCKSTEP_ETCD__REQUEST_TIMEOUT".into(), "3s".into()),
            ],
            ..LabOptions::default()
        };
        let lab = Lab::start("trust-call-timeout", options)
            .await
            .expect("lab");
        let mut admin = lab.admin(0).await.expect("admin");

        // Within the bound: a switch with the lab's 100 ms grace answers.
        let t = Instant::now();
        let fast = admin
            .switchover(proto::SwitchRequest {
                timeout_ms: 1500,
                ..switch(Setup::Warm, "fast", "")
            })
            .await
            .expect("a switch within grpc.call_timeout answers")
            .into_inner();
        let fast_took = t.elapsed();
        println!("fast switchover answered in {fast_took:?}");
        assert!(fast.completed, "{fast:?}");
        assert!(fast_took < call_timeout, "took {fast_took:?}");
        lab.wait_all_lbs(LbTarget::Serve(Setup::Warm), Duration::from_secs(5))
            .await
            .expect("every LB on warm");

        // A wait past the bound (20 s) is refused, and nothing is stored.
        let e = admin
            .switchover(switch(Setup::Hot, "slow", ""))
            .await
            .expect_err("a wait past grpc.call_timeout is refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains("grpc.call_timeout"), "{}", e.message());
        let status = admin
            .status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        let route = status.route.expect("route");
        assert_eq!(
            (route.epoch, route.setup),
            (fast.epoch, PSetup::Warm as i32),
            "nothing moved"
        );
        // A scheduled one returns at once: its 20 s runs from its time.
        let at = humantime::format_rfc3339_millis(
            std::time::SystemTime::now() + Duration::from_secs(3600),
        )
        .to_string();
        let scheduled = admin
            .switchover(proto::SwitchRequest {
                at,
                ..switch(Setup::Hot, "scheduled", "")
            })
            .await
            .expect("a scheduled switch is not bound by grpc.call_timeout")
            .into_inner();
        assert!(!scheduled.scheduled_at.is_empty(), "{scheduled:?}");
        admin
            .cancel(proto::CancelRequest {
                id: scheduled.request_id,
                ..Default::default()
            })
            .await
            .expect("cancel the scheduled switch");

        // The bound on a call whose dependency hangs.
        let etcd = &lab.etcd.nodes[0].guard;
        etcd.signal(Signal::SIGSTOP).expect("SIGSTOP etcd");
        let t = Instant::now();
        let cut = admin
            .history(proto::HistoryRequest {
                limit: 5,
                ..Default::default()
            })
            .await;
        let cut_after = t.elapsed();
        etcd.signal(Signal::SIGCONT).expect("SIGCONT etcd");
        let e = cut.expect_err("a call past grpc.call_timeout is cut");
        println!(
            "history with etcd frozen cut after {cut_after:?}: {:?} {}",
            e.code(),
            e.message()
        );
        assert_eq!(e.code(), Code::Cancelled, "{}", e.message());
        assert_eq!(e.message(), "Timeout expired");
        assert!(
            cut_after >= call_timeout && cut_after < call_timeout + Duration::from_secs(1),
            "cut after {cut_after:?}, grpc.call_timeout is {call_timeout:?}"
        );

        // The slot of the cut call is free again (one slot in all).
        let t = Instant::now();
        admin
            .status(proto::StatusRequest {})
            .await
            .expect("the cut call's Admin slot was given back");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    });
}
