//! One end's outage as its SAEs see it: a loop of ETSI 014 `status` calls
//! through that end's LB, each on a fresh connection (as an SAE that opens
//! one per request), about every millisecond. An outage is a run of refused
//! or failed calls, from the start of the first to the end of the next
//! answered one: the time an SAE at that end could not reach a KME.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::Method;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::HttpConn;

/// One closed outage.
#[derive(Clone, Copy, Debug)]
pub struct Outage {
    pub start: Instant,
    pub length: Duration,
}

/// Probes one LB until stopped.
pub struct EndProbe {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    outages: Arc<Mutex<Vec<Outage>>>,
    calls: Arc<Mutex<u64>>,
}

impl EndProbe {
    /// Calls `GET path` at `lb` every `interval` (plus the call's time).
    pub fn start(lb: SocketAddr, path: String, interval: Duration) -> EndProbe {
        let (stop, mut stopped) = watch::channel(false);
        let outages = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(Mutex::new(0u64));
        let (out, count) = (outages.clone(), calls.clone());
        let task = tokio::spawn(async move {
            let timeout = Duration::from_millis(500);
            let mut down_since: Option<Instant> = None;
            while !*stopped.borrow() {
                let start = Instant::now();
                let ok = async {
                    let mut conn = HttpConn::connect(lb, timeout).await?;
                    conn.request(Method::GET, &path, None, timeout).await
                }
                .await
                .is_ok_and(|r| r.status == 200);
                *count.lock().unwrap_or_else(PoisonError::into_inner) += 1;
                match (ok, down_since) {
                    (false, None) => down_since = Some(start),
                    (true, Some(since)) => {
                        out.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(Outage {
                                start: since,
                                length: since.elapsed(),
                            });
                        down_since = None;
                    }
                    _ => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stopped.changed() => {}
                }
            }
        });
        EndProbe {
            stop,
            task,
            outages,
            calls,
        }
    }

    /// Stops probing; returns every closed outage and the number of calls.
    pub async fn stop(self) -> (Vec<Outage>, u64) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let outages = self
            .outages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let calls = *self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        (outages, calls)
    }
}
