//! ETSI GS QKD 014 health probes of this member's own role's hot and warm
//! KMEs. Members publish changes (not every probe) in their etcd record.

use crate::sidecar::Shared;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lockstep_core::{Health, Setup};
use std::sync::Arc;
use tracing::{info, warn};

/// Rise/fall debouncing of raw probe results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Debounce {
    pub state: Health,
    streak_ok: u32,
    streak_bad: u32,
    rise: u32,
    fall: u32,
}

impl Debounce {
    pub fn new(rise: u32, fall: u32) -> Debounce {
        Debounce {
            state: Health::Unknown,
            streak_ok: 0,
            streak_bad: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// Feeds one result; returns the new state if it changed.
    pub fn observe(&mut self, ok: bool) -> Option<Health> {
        if ok {
            self.streak_ok += 1;
            self.streak_bad = 0;
        } else {
            self.streak_bad += 1;
            self.streak_ok = 0;
        }
        let next = if self.streak_ok >= self.rise {
            Health::Up
        } else if self.streak_bad >= self.fall {
            Health::Down
        } else {
            self.state
        };
        (next != self.state).then(|| {
            self.state = next;
            next
        })
    }
}

/// Checks an ETSI 014 status answer: it must parse and carry the SAE ids.
pub fn status_ok(body: &[u8], sae_id: &str) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("status is not JSON: {e}"))?;
    let master = v.get("master_SAE_ID").and_then(|x| x.as_str());
    let slave = v.get("slave_SAE_ID").and_then(|x| x.as_str());
    if master.is_none() || slave.is_none() {
        return Err("status lacks master_SAE_ID/slave_SAE_ID".into());
    }
    if master != Some(sae_id) && slave != Some(sae_id) {
        return Err(format!(
            "status names SAEs {master:?}/{slave:?}, not {sae_id:?}"
        ));
    }
    Ok(())
}

pub async fn run(shared: Arc<Shared>) {
    let probe = &shared.config.probe;
    for setup in Setup::ALL {
        let url = match setup {
            Setup::Hot => probe.hot.clone(),
            Setup::Warm => probe.warm.clone(),
        };
        let Some(url) = url else { continue };
        tokio::spawn(probe_one(shared.clone(), setup, url));
    }
}

async fn probe_one(shared: Arc<Shared>, setup: Setup, base: String) {
    let cfg = &shared.config.probe;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!(
        "{}/api/v1/keys/{}/status",
        base.trim_end_matches('/'),
        cfg.sae_id
    );
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        warn!(%url, "bad probe URL; health stays unknown");
        return;
    };
    let mut debounce = Debounce::new(cfg.rise, cfg.fall);
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = tokio::time::timeout(cfg.timeout, async {
            let resp = client.get(uri.clone()).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("HTTP {status}"));
            }
            status_ok(&body, &cfg.sae_id)
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", cfg.timeout)));
        if let Some(state) = debounce.observe(result.is_ok()) {
            match &result {
                Ok(()) => info!(%setup, %state, "KME health changed"),
                Err(e) => warn!(%setup, %state, error = %e, "KME health changed"),
            }
            shared.metrics.probe(setup, state == Health::Up);
            shared.record.send_modify(|r| match setup {
                Setup::Hot => r.health.hot = state,
                Setup::Warm => r.health.warm = state,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounce_needs_rise_and_fall_streaks() {
        let mut d = Debounce::new(2, 2);
        assert_eq!(d.observe(true), None);
        assert_eq!(d.observe(true), Some(Health::Up));
        assert_eq!(d.observe(false), None);
        assert_eq!(d.observe(true), None);
        assert_eq!(d.observe(false), None);
        assert_eq!(d.observe(false), Some(Health::Down));
    }

    #[test]
    fn status_must_name_the_sae() {
        let ok = br#"{"master_SAE_ID":"A","slave_SAE_ID":"B","key_size":256}"#;
        assert!(status_ok(ok, "B").is_ok());
        assert!(status_ok(ok, "C").is_err());
        assert!(status_ok(b"not json", "B").is_err());
        assert!(status_ok(br#"{"key_size":1}"#, "B").is_err());
    }
}
