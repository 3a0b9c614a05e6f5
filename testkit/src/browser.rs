//! Headless Chromium driven over the W3C WebDriver protocol: Debian's
//! `chromium` and `chromium-driver` (`scripts/install-deps` installs them),
//! spoken to with the lab's own HTTP client; nothing is downloaded.

use crate::http::http_once;
use crate::lab::process::{free_port, wait_for_tcp, ChildGuard};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where Debian (and most distributions) put the browser and its driver.
const BROWSERS: [&str; 3] = [
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
];
const DRIVERS: [&str; 2] = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];

/// The browser and driver binaries, or why they are not there.
pub fn find() -> Result<(PathBuf, PathBuf), String> {
    let pick = |list: &[&str]| list.iter().map(PathBuf::from).find(|p| p.is_file());
    let browser = pick(&BROWSERS).ok_or_else(|| {
        format!("no Chromium at {BROWSERS:?}: install Debian's chromium and chromium-driver (scripts/install-deps)")
    })?;
    let driver = pick(&DRIVERS).ok_or_else(|| {
        format!("no chromedriver at {DRIVERS:?}: install Debian's chromium-driver (scripts/install-deps)")
    })?;
    Ok((browser, driver))
}

/// One headless browser session; the driver (and the browser it started)
/// is killed when this is dropped.
pub struct Browser {
    driver: SocketAddr,
    session: String,
    _guard: ChildGuard,
}

const CALL: Duration = Duration::from_secs(30);

async fn call(addr: SocketAddr, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    let body = body.map(|b| Bytes::from(b.to_string()));
    let reply = http_once(addr, method.clone(), path, body, CALL).await?;
    let v: Value = serde_json::from_slice(&reply.body).with_context(|| {
        format!(
            "WebDriver {method} {path}: not JSON: {}",
            reply.body_excerpt()
        )
    })?;
    if reply.status != 200 {
        bail!(
            "WebDriver {method} {path}: HTTP {}: {}",
            reply.status,
            v["value"]["message"]
                .as_str()
                .unwrap_or(&reply.body_excerpt())
        );
    }
    Ok(v["value"].clone())
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session
    /// with a window of `width` × `height` CSS pixels; the driver's log
    /// goes to `<dir>/chromedriver.log`.
    pub async fn start(dir: &Path, width: u32, height: u32) -> Result<Browser> {
        let (browser, driver) = find().map_err(|e| anyhow!(e))?;
        let port = free_port()?;
        let mut cmd = Command::new(&driver);
        cmd.arg(format!("--port={port}"));
        let guard = ChildGuard::spawn("chromedriver", cmd, &dir.join("chromedriver.log"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_tcp(addr, Duration::from_secs(10)).context("chromedriver did not start")?;
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": browser,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--hide-scrollbars",
                            format!("--window-size={width},{height}"),
                        ],
                    },
                },
            },
        });
        let v = call(addr, Method::POST, "/session", Some(caps)).await?;
        let session = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("WebDriver gave no session id: {v}"))?
            .to_string();
        Ok(Browser {
            driver: addr,
            session,
            _guard: guard,
        })
    }

    async fn cmd(&self, method: Method, what: &str, body: Option<Value>) -> Result<Value> {
        call(
            self.driver,
            method,
            &format!("/session/{}/{what}", self.session),
            body,
        )
        .await
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.cmd(Method::POST, "url", Some(json!({ "url": url })))
            .await
            .map(|_| ())
    }

    /// Sets the window's size in CSS pixels.
    pub async fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.cmd(
            Method::POST,
            "window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await
        .map(|_| ())
    }

    /// Runs `script` (a function body: `return ...`) in the page.
    pub async fn eval(&self, script: &str) -> Result<Value> {
        self.cmd(
            Method::POST,
            "execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// A PNG of the window, written to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.cmd(Method::GET, "screenshot", None).await?;
        let b64 = v.as_str().ok_or_else(|| anyhow!("screenshot: no data"))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("screenshot: bad base64")?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session (the driver is killed on drop either way).
    pub async fn quit(self) {
        let _ = call(
            self.driver,
            Method::DELETE,
            &format!("/session/{}", self.session),
            None,
        )
        .await;
    }
}
