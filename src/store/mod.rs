//! etcd: the link's shared state and the fencing that protects it.
//!
//! Keys under `<prefix>/<link>/`:
//! * `leader`: the leader's member id on its lease; create_revision = token.
//! * `route`: the [`Route`] (JSON), written only by a token-guarded txn.
//! * `members/<id>`: each member's [`MemberRecord`] on its own lease.
//! * `request`: the one pending manual request; `outcome`: what became of
//!   the last one.
//! * `paused`: present while the link is paused.
//! * `history/<epoch, zero-padded>[.<what>]`: one record per transition
//!   (`HistoryRecord::key`).
//!
//! One unreadable member or history record is skipped with a WARN: it is
//! never a reason to step down or to fail `status`.

pub(crate) mod access;

use backon::{ExponentialBuilder, Retryable};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use lockstep_core::leader::{HistoryRecord, Listed, MemberRecord, RequestOutcome, WriteFailure};
use lockstep_core::link::{link_state, LinkState, MemberLb};
use lockstep_core::member::LinkRead;
use lockstep_core::policy::{Pause, Request};
use lockstep_core::{Epoch, MemberId, Rev, Route, Token};
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// An error of the etcd client, kept opaque: the store's interface names
/// no etcd-client type.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct EtcdError(etcd_client::Error);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "etcd at {endpoints} unreachable: {source}; check `etcd.endpoints` and that etcd is up"
    )]
    Unreachable {
        endpoints: String,
        #[source]
        source: EtcdError,
    },
    #[error("etcd request failed: {0}")]
    Etcd(EtcdError),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// A watch's stream failed (the connection under it broke).
    #[error("{0}")]
    WatchBroke(#[source] EtcdError),
    /// etcd canceled a watch, for the reason given.
    #[error("watch canceled: {0}")]
    WatchCanceled(String),
    #[error("bad value under {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// etcd refused our TLS or credentials; says which setting to fix.
    #[error("{0}")]
    Refused(String),
    /// The `[etcd]` TLS or credential settings cannot be used.
    #[error("{0}")]
    Settings(String),
}

/// Why a member id could not be registered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegisterError {
    /// Another lease holds the id: a previous incarnation that has not
    /// expired yet, or another live sidecar configured with the same id.
    #[error(
        "member id {id:?} is registered under another lease ({lease:x}) by the sidecar at {grpc}"
    )]
    Taken {
        id: String,
        lease: i64,
        grpc: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> Self {
        StoreError::Etcd(EtcdError(e))
    }
}

impl StoreError {
    /// etcd says the lease no longer exists (it expired or was revoked).
    pub(crate) fn is_lease_gone(&self) -> bool {
        match self {
            StoreError::Etcd(EtcdError(etcd_client::Error::LeaseKeepAliveError(msg))) => {
                msg.contains("not found")
            }
            StoreError::Etcd(EtcdError(etcd_client::Error::GRpcStatus(status))) => {
                status.code() == tonic::Code::NotFound && status.message().contains("lease")
            }
            _ => false,
        }
    }
}

/// One link's keys in etcd.
#[derive(Clone)]
pub struct Store {
    /// Cheap to clone: all clones share one gRPC channel.
    client: Client,
    /// `<prefix>/<link>/`, with the trailing slash.
    base: String,
    /// Bound on every unary request, so a hung etcd turns into an error.
    timeout: Duration,
    /// Requests that failed, shared by clones (`request_errors`).
    failures: Arc<AtomicU64>,
}

/// The whole link read at one revision.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub rev: Rev,
    pub leader: Option<(MemberId, Token)>,
    pub route: Option<(Route, Rev)>,
    pub members: Vec<Listed>,
    pub request: Option<(Request, Rev)>,
    pub outcome: Option<RequestOutcome>,
    pub paused: Option<Pause>,
    /// The leader's failover policy: what it would do next, and why.
    pub policy: Option<String>,
    /// The epoch of the newest history record.
    pub history_epoch: Option<Epoch>,
}

/// A change under the link's prefix, as the watch reports it.
#[derive(Clone, Debug)]
pub(crate) enum Change {
    Route(Route, Rev),
    RouteGone(Rev),
    Member(Listed),
    MemberGone(MemberId, Rev),
    Request(Request, Rev),
    RequestGone(Rev),
    Outcome(RequestOutcome),
    Paused(Option<Pause>),
    Leader(Option<(MemberId, Token)>),
    Other,
}

impl Snapshot {
    /// The link judged from every member's LB read-back against the route
    /// (`lockstep_core::link`: the one definition of "complete").
    pub fn link(&self) -> LinkState {
        link_state(
            self.route.as_ref().map(|(r, _)| r),
            self.members.iter().map(|m| MemberLb {
                id: m.id.clone(),
                role: m.record.role,
                applied: m.record.applied,
                lb: m.record.lb,
            }),
        )
    }

    /// True when every member's LB reads back the route's serve.
    pub fn settled(&self) -> bool {
        !self.members.is_empty() && self.link().settled().is_some()
    }

    /// Brings the route and the member records (what [`Snapshot::link`]
    /// judges) forward by one change of a watch opened before this
    /// snapshot was read. A change at or below `rev` is already in the
    /// snapshot and is skipped; the newer ones, applied in the watch's
    /// order, give the link at the revision of the last one with no read
    /// again. `rev` stays the read's revision (one txn's changes share a
    /// revision), and other keys are left as read. Returns whether it
    /// changed anything.
    pub(crate) fn apply_link_change(&mut self, change: &Change) -> bool {
        let newer = |rev: Rev| rev > self.rev;
        match change {
            Change::Route(route, rev) if newer(*rev) => self.route = Some((route.clone(), *rev)),
            Change::RouteGone(rev) if newer(*rev) => self.route = None,
            Change::Member(listed) if newer(listed.rev) => {
                match self.members.iter_mut().find(|m| m.id == listed.id) {
                    Some(m) => *m = listed.clone(),
                    None => self.members.push(listed.clone()),
                }
            }
            Change::MemberGone(id, rev) if newer(*rev) => self.members.retain(|m| &m.id != id),
            _ => return false,
        }
        true
    }

    /// The link as a member's registration reads it: the route, and the
    /// highest epoch any member record or the history shows applied.
    pub(crate) fn link_read(&self) -> LinkRead {
        let applied = self
            .members
            .iter()
            .filter_map(|m| m.record.applied.map(|a| a.epoch));
        LinkRead {
            route: self.route.as_ref().map(|(r, _)| r.clone()),
            rev: self.rev,
            floor: applied.chain(self.history_epoch).max().unwrap_or(0),
        }
    }
}

/// What a [`Watch`] covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    /// Every key of the link.
    Link,
    /// The `route` key.
    Route,
    /// The `leader` key.
    Leader,
}

impl Watched {
    /// The key's name under the link, `None` for the whole link.
    fn key(self) -> Option<&'static str> {
        match self {
            Watched::Link => None,
            Watched::Route => Some("route"),
            Watched::Leader => Some("leader"),
        }
    }
}

/// A watch of some of the link's keys: their changes, decoded.
pub(crate) struct Watch {
    stream: WatchStream,
    /// `<prefix>/<link>/`, to decode keys with.
    base: String,
    failures: Arc<AtomicU64>,
}

impl Watch {
    /// The next batch of changes etcd sends, each decoded on its own (an
    /// unreadable key does not hide the others); `Ok(None)` once the watch
    /// has ended. A canceled watch is `StoreError::WatchCanceled`.
    pub(crate) async fn next(
        &mut self,
    ) -> Result<Option<Vec<Result<Change, StoreError>>>, StoreError> {
        let Some(resp) = self
            .stream
            .message()
            .await
            .map_err(|e| count(&self.failures, StoreError::WatchBroke(EtcdError(e))))?
        else {
            return Ok(None);
        };
        if resp.canceled() {
            return Err(StoreError::WatchCanceled(resp.cancel_reason().to_string()));
        }
        Ok(Some(
            resp.events()
                .iter()
                .map(|event| decode(&self.base, event))
                .collect(),
        ))
    }
}

/// The keep-alive stream of one lease.
pub(crate) struct KeepAlive {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    failures: Arc<AtomicU64>,
    /// A keep-alive was sent and not answered yet: dropped so, it failed.
    unanswered: bool,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        if self.unanswered {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl KeepAlive {
    /// Sends one keep-alive.
    pub(crate) async fn send(&mut self) -> Result<(), StoreError> {
        self.keeper
            .keep_alive()
            .await
            .map_err(|e| count(&self.failures, StoreError::from(e)))?;
        self.unanswered = true;
        Ok(())
    }

    /// The next answer: the lease's remaining TTL in seconds (0 or less:
    /// the lease is gone); `None` once the stream has ended.
    pub(crate) async fn answer(&mut self) -> Result<Option<i64>, StoreError> {
        let answer = self.stream.message().await;
        self.unanswered = false;
        let answer = answer.map_err(|e| count(&self.failures, StoreError::from(e)))?;
        Ok(answer.map(|resp| resp.ttl()))
    }
}

impl Store {
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        link: &str,
        dial_timeout: Duration,
        timeout: Duration,
    ) -> Result<Store, StoreError> {
        let config = crate::config::EtcdConfig {
            endpoints: endpoints.to_vec(),
            prefix: prefix.to_string(),
            dial_timeout,
            request_timeout: timeout,
            ..crate::config::EtcdConfig::default()
        };
        Store::connect_with(&config, link).await
    }

    /// Connects as `[etcd]` says: endpoints, timeouts, TLS and credentials.
    /// A refusal (wrong password, no permission on the link's keys, a
    /// certificate etcd does not trust) is [`StoreError::Refused`], naming
    /// the setting to fix.
    pub async fn connect_with(
        config: &crate::config::EtcdConfig,
        link: &str,
    ) -> Result<Store, StoreError> {
        let (endpoints, dial_timeout, timeout) = (
            &config.endpoints,
            config.dial_timeout,
            config.request_timeout,
        );
        let base = format!("{}/{}/", config.prefix.trim_end_matches('/'), link);
        let access = access::Access {
            user: config.user.clone(),
            prefix: base.clone(),
        };
        let options = access::connect_options(
            config,
            ConnectOptions::new()
                .with_connect_timeout(dial_timeout)
                .with_timeout(timeout)
                .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2)),
        )
        .map_err(StoreError::Settings)?;
        let connect = Client::connect(endpoints, Some(options));
        let client = tokio::time::timeout(dial_timeout + timeout, connect)
            .await
            .map_err(|_| StoreError::Timeout(dial_timeout + timeout))?
            .map_err(|source| match access::explain(&source, &access) {
                Some(why) => StoreError::Refused(why),
                None => StoreError::Unreachable {
                    endpoints: endpoints.join(","),
                    source: EtcdError(source),
                },
            })?;
        let store = Store {
            client,
            base,
            timeout,
            failures: Arc::default(),
        };
        // Fail now, with a clear message, rather than on the first write.
        store
            .get_raw(&store.key("route"))
            .await
            .map_err(|e| match e {
                StoreError::Etcd(source) => match access::explain(&source.0, &access) {
                    Some(why) => StoreError::Refused(why),
                    None => StoreError::Unreachable {
                        endpoints: endpoints.join(","),
                        source,
                    },
                },
                other => other,
            })?;
        Ok(store)
    }

    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{}", self.base, name)
    }

    pub(crate) fn member_key(&self, id: &str) -> String {
        format!("{}members/{}", self.base, id)
    }

    fn history_key(&self, record: &HistoryRecord) -> String {
        format!("{}history/{}", self.base, record.key())
    }

    /// Runs one unary request against etcd within `timeout`. A request
    /// that never left this process (the client's balancer picked an
    /// endpoint it cannot connect to, e.g. a dead etcd node) is sent again,
    /// soon, so one dead node of a cluster with quorum costs milliseconds,
    /// not an error: etcd-client does not fail over between endpoints by
    /// itself. A write that may have reached etcd is not repeated (the
    /// caller learns its outcome is unknown); see `bounded_idempotent`.
    async fn bounded<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.with_retries(op, never_sent).await
    }

    /// `bounded` for requests that may run twice (reads, puts of the same
    /// value, deletes, opening a stream): also sent again when the
    /// connection it went out on turned out dead.
    async fn bounded_idempotent<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.with_retries(op, |e| never_sent(e) || connection_lost(e))
            .await
    }

    async fn with_retries<T, F, Fut>(
        &self,
        mut op: F,
        again: fn(&etcd_client::Error) -> bool,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let attempts = (|| op(self.client.clone()))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(10))
                    .with_max_delay(Duration::from_millis(200))
                    .without_max_times(),
            )
            .sleep(tokio::time::sleep)
            .when(again)
            .notify(
                |e, after| debug!(error = %e, retry_in = ?after, "etcd request did not get through; sending it again"),
            );
        let result = tokio::time::timeout(self.timeout, attempts)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))
            .and_then(|r| r.map_err(StoreError::from));
        result.map_err(|e| count(&self.failures, e))
    }

    /// etcd requests of this store (and its clones) that failed: unary
    /// requests (after their retries), keep-alives, broken watches.
    pub(crate) fn request_errors(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    async fn get_raw(&self, key: &str) -> Result<Option<etcd_client::KeyValue>, StoreError> {
        let resp = self
            .bounded_idempotent(|mut c| async move { c.get(key, None).await })
            .await?;
        Ok(resp.kvs().first().cloned())
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        let txn = &txn;
        self.bounded(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    // ---- leases ----

    pub(crate) async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let ttl = ttl.as_secs().max(1) as i64;
        let resp = self
            .bounded(|mut c| async move { c.lease_grant(ttl, None).await })
            .await?;
        Ok(resp.id())
    }

    /// Opens the keep-alive stream of `lease`.
    pub(crate) async fn keep_alive(&self, lease: i64) -> Result<KeepAlive, StoreError> {
        let (keeper, stream) = self
            .bounded_idempotent(|mut c| async move { c.lease_keep_alive(lease).await })
            .await?;
        Ok(KeepAlive {
            keeper,
            stream,
            failures: self.failures.clone(),
            unanswered: false,
        })
    }

    pub(crate) async fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        self.bounded_idempotent(|mut c| async move { c.lease_revoke(lease).await })
            .await
            .map(|_| ())
    }

    // ---- members ----

    /// Who holds member `id`'s key, if anyone: the lease and the gRPC
    /// address its record names.
    pub(crate) async fn member(&self, id: &str) -> Result<Option<(i64, String)>, StoreError> {
        let key = self.member_key(id);
        Ok(self.get_raw(&key).await?.map(|kv| {
            let grpc = from_json::<MemberRecord>(&key, kv.value())
                .map_or_else(|_| "an unreadable address".into(), |r| r.grpc);
            (kv.lease(), grpc)
        }))
    }

    /// Registers member `id` on `lease`: creates its key unless another
    /// lease holds it. A sidecar never merges into a member id that another
    /// lease holds (`RegisterError::Taken`, naming who holds it).
    pub(crate) async fn register_member(
        &self,
        id: &str,
        record: &MemberRecord,
        lease: i64,
    ) -> Result<Rev, RegisterError> {
        let key = self.member_key(id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                to_json(record),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(resp.header().map_or(0, |h| h.revision()));
        }
        let holder = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        match holder {
            Some(kv) if kv.lease() == lease => Ok(kv.mod_revision()),
            Some(kv) => Err(RegisterError::Taken {
                id: id.to_string(),
                lease: kv.lease(),
                grpc: from_json::<MemberRecord>(&key, kv.value())
                    .map_or_else(|_| "an unreadable address".into(), |r| r.grpc),
            }),
            // Deleted between the compare and the get: try again.
            None => Err(RegisterError::Store(StoreError::Corrupt {
                key,
                reason: "member key vanished during registration; retrying".into(),
            })),
        }
    }

    /// Writes this member's record, only while its key is on `lease` (it
    /// never overwrites a key another sidecar registered). Returns whether
    /// it was written.
    pub(crate) async fn put_member(
        &self,
        id: &str,
        record: &MemberRecord,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let key = self.member_key(id);
        let txn = Txn::new()
            .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::put(
                key,
                to_json(record),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// The route and the revision it was read at (watch from `rev + 1`).
    pub async fn read_route(&self) -> Result<(Option<Route>, Rev), StoreError> {
        let key = self.key("route");
        let k = key.as_str();
        let resp = self
            .bounded_idempotent(|mut c| async move { c.get(k, None).await })
            .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let route = match resp.kvs().first() {
            Some(kv) => Some(from_json::<Route>(&key, kv.value())?),
            None => None,
        };
        Ok((route, rev))
    }

    /// Watches `what` from now on: every change after this call.
    pub(crate) async fn watch(&self, what: Watched) -> Result<Watch, StoreError> {
        // Start revision 0: from "now". A watch from a past revision is
        // caught up by etcd only every 100 ms, and so is one from "now"
        // when a write commits while etcd registers it (it reads its
        // revision first): open watches before a burst of writes, not
        // during one.
        let mut options = WatchOptions::new().with_start_revision(0);
        let key = match what.key() {
            Some(n) => self.key(n),
            None => {
                options = options.with_prefix();
                self.base.clone()
            }
        };
        let key = key.as_str();
        let stream = self
            .bounded_idempotent(|mut c| {
                let options = options.clone();
                async move { c.watch(key, Some(options)).await }
            })
            .await?;
        Ok(Watch {
            stream,
            base: self.base.clone(),
            failures: self.failures.clone(),
        })
    }

    /// Opens a watch of `what` from now, then reads the whole link: nothing
    /// written after the read is missed, and a change made between the two
    /// comes twice (in the snapshot and on the watch), which a state machine
    /// ignores as already seen. This order, not a watch from the read's
    /// revision: etcd catches a watch from a past revision up only every
    /// 100 ms, which a switch would wait for.
    pub(crate) async fn watch_then_snapshot(
        &self,
        what: Watched,
    ) -> Result<(Watch, Snapshot), StoreError> {
        let watch = self.watch(what).await?;
        let snapshot = self.snapshot().await?;
        Ok((watch, snapshot))
    }

    // ---- election ----

    /// Tries to become leader: creates the leader key on `lease` if there is
    /// none. Returns the token if this member holds the key (also when it
    /// already did, e.g. after a failed resign).
    pub(crate) async fn campaign(&self, id: &str, lease: i64) -> Result<Option<Token>, StoreError> {
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(key.clone(), id, Some(PutOptions::new().with_lease(lease))),
                TxnOp::get(key.clone(), None),
            ])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.txn(txn).await?;
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    if kv.value() == id.as_bytes() && kv.lease() == lease {
                        return Ok(Some(kv.create_revision()));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Gives up leadership held under `token` (no-op if already lost).
    pub(crate) async fn resign(&self, token: Token) -> Result<(), StoreError> {
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                token,
            )])
            .and_then([TxnOp::delete(key, None)]);
        self.txn(txn).await.map(|_| ())
    }

    // ---- reading the whole link ----

    /// The whole link at one revision, with the newest history record's
    /// epoch (the rest of `history/` grows with every switch and is left
    /// out).
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        // Keys from "history0" ('0' sorts right after '/') to the prefix's
        // end: everything but `history/`.
        let from = format!("{}history0", self.base);
        let mut end = self.base.clone().into_bytes();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let newest_history = GetOptions::new()
            .with_prefix()
            .with_sort(
                etcd_client::SortTarget::Key,
                etcd_client::SortOrder::Descend,
            )
            // The newest readable one: a few, in case one is unreadable.
            .with_limit(8);
        let txn = Txn::new().and_then([
            TxnOp::get(from, Some(GetOptions::new().with_range(end))),
            TxnOp::get(self.key("history/"), Some(newest_history)),
        ]);
        let txn = &txn;
        let resp = self
            .bounded_idempotent(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let mut snap = Snapshot {
            rev: resp.header().map_or(0, |h| h.revision()),
            ..Snapshot::default()
        };
        let mut gets = resp.op_responses().into_iter().filter_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (Some(link), Some(history)) = (gets.next(), gets.next()) else {
            return Err(StoreError::Corrupt {
                key: self.base.clone(),
                reason: "etcd answered the link read without its two ranges".into(),
            });
        };
        for kv in history.kvs() {
            let key = String::from_utf8_lossy(kv.key()).to_string();
            match from_json::<HistoryRecord>(&key, kv.value()) {
                Ok(h) => {
                    snap.history_epoch = Some(h.epoch);
                    break;
                }
                Err(e) => warn!(error = %e, "unreadable history record skipped"),
            }
        }
        for kv in link.kvs() {
            let key = String::from_utf8_lossy(kv.key()).to_string();
            let Some(name) = key.strip_prefix(&self.base) else {
                continue;
            };
            match name {
                "route" => snap.route = Some((from_json(&key, kv.value())?, kv.mod_revision())),
                "request" => snap.request = Some((from_json(&key, kv.value())?, kv.mod_revision())),
                "outcome" => snap.outcome = Some(from_json(&key, kv.value())?),
                "paused" => snap.paused = Some(from_json(&key, kv.value())?),
                "policy" => snap.policy = Some(String::from_utf8_lossy(kv.value()).to_string()),
                "leader" => {
                    snap.leader = Some((
                        String::from_utf8_lossy(kv.value()).to_string(),
                        kv.create_revision(),
                    ))
                }
                n => {
                    if let Some(id) = n.strip_prefix("members/") {
                        match from_json(&key, kv.value()) {
                            Ok(record) => snap.members.push(Listed {
                                id: id.to_string(),
                                record,
                                rev: kv.mod_revision(),
                                lease: kv.lease(),
                            }),
                            // Its lease bounds how long it can matter, like
                            // any dead member's.
                            Err(e) => warn!(error = %e, "unreadable member record skipped"),
                        }
                    }
                }
            }
        }
        Ok(snap)
    }

    // ---- leader writes: every one guarded by the token ----

    /// The switch's route write. See `LeaderAction::WriteRoute`.
    pub async fn write_route(
        &self,
        token: Token,
        route: &Route,
        expect_route_rev: Rev,
        consume: Option<(Rev, &RequestOutcome)>,
        history: Option<&HistoryRecord>,
        list_members: bool,
    ) -> Result<(Rev, Vec<Listed>), WriteFailure> {
        let leader_key = self.key("leader");
        let route_key = self.key("route");
        let mut compares = vec![
            Compare::create_revision(leader_key.clone(), CompareOp::Equal, token),
            Compare::mod_revision(route_key.clone(), CompareOp::Equal, expect_route_rev),
        ];
        let mut ops = vec![TxnOp::put(route_key, to_json(route), None)];
        if let Some((rev, outcome)) = consume {
            compares.push(Compare::mod_revision(
                self.key("request"),
                CompareOp::Equal,
                rev,
            ));
            ops.push(TxnOp::delete(self.key("request"), None));
            ops.push(TxnOp::put(self.key("outcome"), to_json(outcome), None));
        }
        if let Some(h) = history {
            ops.push(TxnOp::put(self.history_key(h), to_json(h), None));
        }
        if list_members {
            ops.push(TxnOp::get(
                self.key("members/"),
                Some(GetOptions::new().with_prefix()),
            ));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else([TxnOp::get(leader_key, None)]);
        let resp = self
            .txn(txn)
            .await
            .map_err(|e| WriteFailure::Unknown(e.to_string()))?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let ops = resp.op_responses();
        if !resp.succeeded() {
            let still_ours = ops.iter().any(|op| match op {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == token),
                _ => false,
            });
            return Err(if still_ours {
                WriteFailure::Conflict
            } else {
                WriteFailure::LostLeadership
            });
        }
        let mut members = Vec::new();
        for op in ops {
            if let TxnOpResponse::Get(g) = op {
                for kv in g.kvs() {
                    let key = String::from_utf8_lossy(kv.key()).to_string();
                    let Some(id) = key.strip_prefix(&self.key("members/")) else {
                        continue;
                    };
                    match from_json::<MemberRecord>(&key, kv.value()) {
                        Ok(record) => members.push(Listed {
                            id: id.to_string(),
                            record,
                            rev: kv.mod_revision(),
                            lease: kv.lease(),
                        }),
                        // A member we cannot read cannot ack either; its
                        // lease bounds the wait like any dead member's.
                        Err(e) => warn!(error = %e, "unreadable member record skipped"),
                    }
                }
            }
        }
        Ok((rev, members))
    }

    /// Deletes the pending request (if still the one decided on) and
    /// records its outcome.
    pub(crate) async fn resolve_request(
        &self,
        token: Token,
        rev: Rev,
        outcome: &RequestOutcome,
    ) -> Result<bool, StoreError> {
        self.guarded(
            token,
            vec![Compare::mod_revision(
                self.key("request"),
                CompareOp::Equal,
                rev,
            )],
            vec![
                TxnOp::delete(self.key("request"), None),
                TxnOp::put(self.key("outcome"), to_json(outcome), None),
            ],
        )
        .await
    }

    /// A leader write: `ops` apply only while the leader key still carries
    /// `token` (and `compares` hold). Returns whether they applied.
    async fn guarded(
        &self,
        token: Token,
        mut compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<bool, StoreError> {
        compares.insert(
            0,
            Compare::create_revision(self.key("leader"), CompareOp::Equal, token),
        );
        Ok(self
            .txn(Txn::new().when(compares).and_then(ops))
            .await?
            .succeeded())
    }

    pub(crate) async fn put_history(
        &self,
        token: Token,
        record: &HistoryRecord,
    ) -> Result<bool, StoreError> {
        let op = TxnOp::put(self.history_key(record), to_json(record), None);
        self.guarded(token, vec![], vec![op]).await
    }

    /// Leader write: deletes the oldest history records beyond the newest
    /// `keep` (one guarded delete of a key range). Returns how many went.
    pub(crate) async fn trim_history(&self, token: Token, keep: u32) -> Result<u64, StoreError> {
        let prefix = self.key("history/");
        let p = prefix.as_str();
        let count = self
            .bounded_idempotent(|mut c| async move {
                c.get(p, Some(GetOptions::new().with_prefix().with_count_only()))
                    .await
            })
            .await?
            .count()
            .max(0) as u64;
        let excess = count.saturating_sub(u64::from(keep));
        if excess == 0 {
            return Ok(0);
        }
        // The key of the newest record to delete: the `excess`-th oldest.
        let options = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(etcd_client::SortTarget::Key, etcd_client::SortOrder::Ascend)
            .with_limit(excess as i64);
        let resp = self
            .bounded_idempotent(|mut c| {
                let options = options.clone();
                async move { c.get(p, Some(options)).await }
            })
            .await?;
        let Some(last) = resp.kvs().last() else {
            return Ok(0);
        };
        let mut end = last.key().to_vec();
        end.push(0);
        let op = TxnOp::delete(
            prefix.as_bytes().to_vec(),
            Some(etcd_client::DeleteOptions::new().with_range(end)),
        );
        let done = self.guarded(token, vec![], vec![op]).await?;
        Ok(if done { excess } else { 0 })
    }

    // ---- admin ----

    /// Stores a manual request unless one is already pending; returns the
    /// pending one on conflict.
    pub async fn put_request(&self, request: &Request) -> Result<Result<Rev, Request>, StoreError> {
        let key = self.key("request");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), to_json(request), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(Ok(resp.header().map_or(0, |h| h.revision())));
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    return Ok(Err(from_json(&key, kv.value())?));
                }
            }
        }
        // Deleted between the compare and the get: report it as pending
        // anyway; the caller retries.
        Err(StoreError::Corrupt {
            key,
            reason: "request vanished during the conflict check; retry".into(),
        })
    }

    /// Leader write: pause the link (the failover policy's cap), with its
    /// history record in the same txn.
    pub(crate) async fn pause_as_leader(
        &self,
        token: Token,
        pause: &Pause,
        record: &HistoryRecord,
    ) -> Result<bool, StoreError> {
        let ops = vec![
            TxnOp::put(self.key("paused"), to_json(pause), None),
            TxnOp::put(self.history_key(record), to_json(record), None),
        ];
        self.guarded(token, vec![], ops).await
    }

    /// Leader write: the policy's note, on the leader's lease so it goes
    /// with the leader.
    pub(crate) async fn put_policy_note(
        &self,
        token: Token,
        lease: i64,
        note: &str,
    ) -> Result<bool, StoreError> {
        let op = TxnOp::put(
            self.key("policy"),
            note,
            Some(PutOptions::new().with_lease(lease)),
        );
        self.guarded(token, vec![], vec![op]).await
    }

    /// Removes a request nobody took (still at `rev`).
    pub async fn withdraw_request(&self, rev: Rev) -> Result<bool, StoreError> {
        let key = self.key("request");
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    /// Pauses (`Some`) or resumes (`None`) the link and writes `record`
    /// (a pause or resume) to the history, in one txn: every pause and
    /// resume has its record. Repeating it writes the same keys again.
    pub(crate) async fn set_paused(
        &self,
        pause: Option<&Pause>,
        record: &HistoryRecord,
    ) -> Result<(), StoreError> {
        let key = self.key("paused");
        let change = match pause {
            Some(p) => TxnOp::put(key, to_json(p), None),
            None => TxnOp::delete(key, None),
        };
        let history = TxnOp::put(self.history_key(record), to_json(record), None);
        self.txn(Txn::new().and_then([change, history]))
            .await
            .map(|_| ())
    }

    /// Puts history records that are no switch (a member's failsafe period),
    /// unguarded: any member may.
    pub(crate) async fn put_records(&self, records: &[HistoryRecord]) -> Result<(), StoreError> {
        let ops: Vec<TxnOp> = records
            .iter()
            .map(|r| TxnOp::put(self.history_key(r), to_json(r), None))
            .collect();
        self.txn(Txn::new().and_then(ops)).await.map(|_| ())
    }

    /// The newest `limit` history records, newest first.
    pub(crate) async fn history(&self, limit: usize) -> Result<Vec<HistoryRecord>, StoreError> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(
                etcd_client::SortTarget::Key,
                etcd_client::SortOrder::Descend,
            )
            .with_limit(limit as i64);
        let key = self.key("history/");
        let key = key.as_str();
        let resp = self
            .bounded_idempotent(|mut c| {
                let options = options.clone();
                async move { c.get(key, Some(options)).await }
            })
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                from_json(&String::from_utf8_lossy(kv.key()), kv.value())
                    .map_err(|e| warn!(error = %e, "unreadable history record skipped"))
                    .ok()
            })
            .collect())
    }
}

/// [`Store::trim_history`] for the leader driver: failures are only logged
/// (the next switch trims again).
pub(crate) async fn trim_history_logged(store: &Store, token: Token, keep: u32) {
    match store.trim_history(token, keep).await {
        Ok(0) => {}
        Ok(n) => debug!(deleted = n, keep, "old history records deleted"),
        Err(e) => tracing::warn!(error = %e, "cannot trim the history"),
    }
}

/// Decodes one watch event under the link's prefix `base`.
fn decode(base: &str, event: &etcd_client::Event) -> Result<Change, StoreError> {
    let Some(kv) = event.kv() else {
        return Ok(Change::Other);
    };
    let key = String::from_utf8_lossy(kv.key()).to_string();
    let Some(name) = key.strip_prefix(base) else {
        return Ok(Change::Other);
    };
    let rev = kv.mod_revision();
    let put = event.event_type() == EventType::Put;
    Ok(match name {
        "route" if put => Change::Route(from_json(&key, kv.value())?, rev),
        "route" => Change::RouteGone(rev),
        "request" if put => Change::Request(from_json(&key, kv.value())?, rev),
        "request" => Change::RequestGone(rev),
        "outcome" if put => Change::Outcome(from_json(&key, kv.value())?),
        "paused" if put => Change::Paused(Some(from_json(&key, kv.value())?)),
        "paused" => Change::Paused(None),
        "leader" if put => Change::Leader(Some((
            String::from_utf8_lossy(kv.value()).to_string(),
            kv.create_revision(),
        ))),
        "leader" => Change::Leader(None),
        n => match n.strip_prefix("members/") {
            Some(id) if put => Change::Member(Listed {
                id: id.to_string(),
                record: from_json(&key, kv.value())?,
                rev,
                lease: kv.lease(),
            }),
            Some(id) => Change::MemberGone(id.to_string(), rev),
            None => Change::Other,
        },
    })
}

/// The request failed before any byte of it reached etcd: connecting to
/// the endpoint the balancer chose failed.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable
                && (status.message().contains("connect error")
                    || status.message().contains("Service was not ready"))
        }
        _ => false,
    }
}

/// The connection the request went out on was found dead (the etcd node
/// behind it died): whether the request got through is unknown.
fn connection_lost(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            matches!(
                status.code(),
                tonic::Code::Unknown | tonic::Code::Unavailable
            ) && status.message().contains("transport error")
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Our own plain data types always serialize.
    serde_json::to_string(v).unwrap_or_default()
}

/// Counts a failed request and passes its error on.
fn count(failures: &AtomicU64, e: StoreError) -> StoreError {
    failures.fetch_add(1, Ordering::Relaxed);
    e
}

fn from_json<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One record type's decoding of `bytes`: a value that survives a
    /// round trip through its own encoding, or `Corrupt` naming the key
    /// and saying why. Returns whether it decoded.
    fn decodes<T>(bytes: &[u8]) -> Result<bool, TestCaseError>
    where
        T: DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
    {
        match from_json::<T>("members/k", bytes) {
            Ok(v) => {
                let again = from_json::<T>("members/k", to_json(&v).as_bytes());
                prop_assert_eq!(again.as_ref().ok(), Some(&v), "{:?}", again);
                Ok(true)
            }
            Err(StoreError::Corrupt { key, reason }) => {
                prop_assert_eq!(key, "members/k");
                prop_assert!(!reason.is_empty());
                Ok(false)
            }
            Err(e) => Err(TestCaseError::fail(format!("not Corrupt: {e:?}"))),
        }
    }

    /// Every record type, as `decodes`; how many decoded.
    fn decode_all(bytes: &[u8]) -> Result<usize, TestCaseError> {
        Ok([
            decodes::<MemberRecord>(bytes)?,
            decodes::<Route>(bytes)?,
            decodes::<HistoryRecord>(bytes)?,
            decodes::<Request>(bytes)?,
            decodes::<RequestOutcome>(bytes)?,
            decodes::<Pause>(bytes)?,
        ]
        .into_iter()
        .filter(|d| *d)
        .count())
    }

    proptest! {
        #![proptest_config(crate::limits::proptest_config())]

        /// etcd values are input: anyone with write access to the prefix
        /// (or a restored old snapshot) may have put anything there.
        #[test]
        fn record_values_never_panic_and_decode_or_are_corrupt(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let decoded = decode_all(&bytes)?;
            // Every record is a JSON object: what is not JSON decodes as none.
            if serde_json::from_slice::<serde_json::Value>(&bytes).map_or(true, |v| !v.is_object()) {
                prop_assert_eq!(decoded, 0);
            }
        }

        /// A route as the leader writes it, with any values: decoded to
        /// exactly those values (a decoder that refused everything would
        /// pass the properties above).
        #[test]
        fn written_routes_never_panic_and_decode_to_what_was_written(
            epoch in any::<u64>(),
            token in any::<i64>(),
            phase in prop_oneof![Just(lockstep_core::Phase::Hold), Just(lockstep_core::Phase::Drain), Just(lockstep_core::Phase::Serve)],
            setup in prop_oneof![Just(lockstep_core::Setup::Hot), Just(lockstep_core::Setup::Warm)],
            reason in ".{0,40}",
            by in ".{0,20}",
            roster in proptest::collection::vec(("[a-z0-9-]{1,8}", any::<i64>()), 0..3),
        ) {
            let route = Route {
                epoch,
                phase,
                setup,
                token,
                reason,
                requested_by: by,
                at: "2025-01-01T00:00:00Z".into(),
                handover: None,
                roster: roster
                    .into_iter()
                    .map(|(id, lease)| lockstep_core::Incarnation { id, lease, grpc: String::new() })
                    .collect(),
            };
            prop_assert_eq!(from_json::<Route>("route", to_json(&route).as_bytes()).ok(), Some(route));
        }

        /// JSON objects with the records' field names and arbitrary values.
        #[test]
        fn json_shaped_values_never_panic_and_decode_or_are_corrupt(
            keys in proptest::collection::vec(prop_oneof![
                Just("epoch"), Just("phase"), Just("setup"), Just("token"), Just("reason"),
                Just("requested_by"), Just("at"), Just("role"), Just("grpc"), Just("applied"),
                Just("lb"), Just("health"), Just("id"), Just("kind"), Just("to"), Just("force"),
                Just("outcome"), Just("from"), Just("status"), Just("message"),
            ], 0..12),
            values in proptest::collection::vec(prop_oneof![
                Just("null".to_string()), Just("\"serve\"".to_string()), Just("\"hot\"".to_string()),
                any::<i64>().prop_map(|n| n.to_string()), any::<u64>().prop_map(|n| n.to_string()),
                "\"[ -~]{0,10}\"", Just("{}".to_string()), Just("[]".to_string()), Just("1e400".to_string()),
            ], 12),
        ) {
            let body: Vec<String> = keys.iter().zip(&values).map(|(k, v)| format!("{k:?}:{v}")).collect();
            decode_all(format!("{{{}}}", body.join(",")).as_bytes())?;
        }
    }
}
