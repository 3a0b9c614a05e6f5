//! `--wait`'s progress: one line per change of the route or of a member's
//! applied state, from `Admin.WatchStatus`, until the switch is done.

use super::emit;
use super::render::progress_line;
use crate::proto::{self, admin_client::AdminClient};
use std::time::Duration;
use tonic::transport::Channel;

/// How long `--wait` waits for the watch to catch up with a completed
/// switch before printing the summary without the final line.
pub(super) const PROGRESS_CATCH_UP: Duration = Duration::from_secs(1);

/// True once `s` shows every live member serving `to` at an epoch after
/// `after`: the end of the switch `--wait` follows.
fn switch_done(s: &proto::StatusReply, to: i32, after: u64) -> bool {
    s.settled
        && s.route.as_ref().is_some_and(|r| {
            r.epoch > after && r.setup == to && r.phase == proto::Phase::Serve as i32
        })
}

/// Follows `Admin.WatchStatus` during a switch, printing one line per change
/// of the route or of a member's applied state.
pub(super) struct Progress {
    stream: tonic::Streaming<proto::StatusReply>,
    /// The epoch before the switch.
    start: u64,
    /// The line shown last, so an unchanged state is not repeated.
    last: String,
}

impl Progress {
    /// Opens the watch and prints the current state, before the switch is
    /// sent, so no step of it is missed. `None`: no progress, the switch
    /// still goes ahead.
    pub(super) async fn start(admin: &mut AdminClient<Channel>) -> Option<Progress> {
        let open = async {
            let mut stream = admin
                .watch_status(proto::StatusRequest {})
                .await
                .ok()?
                .into_inner();
            let first = stream.message().await.ok()??;
            Some((stream, first))
        };
        let (stream, first) = tokio::time::timeout(Duration::from_secs(2), open)
            .await
            .ok()??;
        let last = progress_line(&first);
        emit(&format!("  {last}\n"));
        Some(Progress {
            stream,
            start: first.route.as_ref().map_or(0, |r| r.epoch),
            last,
        })
    }

    /// Prints changes until the switch to `to` is done and returns the final
    /// line if not printed yet (printed with the summary, so it cannot be
    /// cut off); `None` if the stream ends first.
    pub(super) async fn follow(mut self, to: i32) -> Option<Option<String>> {
        while let Ok(Some(s)) = self.stream.message().await {
            let line = progress_line(&s);
            if switch_done(&s, to, self.start) {
                return Some((line != self.last).then_some(line));
            }
            if line != self.last {
                emit(&format!("  {line}\n"));
                self.last = line;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_is_done_when_settled_on_the_target_at_a_later_epoch() {
        let warm = proto::Setup::Warm as i32;
        let mut s = proto::StatusReply {
            route: Some(proto::Route {
                epoch: 7,
                phase: proto::Phase::Drain as i32,
                setup: warm,
                ..Default::default()
            }),
            settled: false,
            ..Default::default()
        };
        assert!(!switch_done(&s, warm, 6), "draining");
        if let Some(r) = s.route.as_mut() {
            r.phase = proto::Phase::Serve as i32;
        }
        assert!(!switch_done(&s, warm, 6), "serving, not settled");
        s.settled = true;
        assert!(switch_done(&s, warm, 6));
        assert!(!switch_done(&s, warm, 7), "the state before the switch");
        assert!(!switch_done(&s, proto::Setup::Hot as i32, 6), "other setup");
    }
}
