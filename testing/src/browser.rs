//! A real headless Chromium for the dashboard's end-to-end tests, driven over WebDriver
//! (the W3C protocol, spoken with the `reqwest` client the harness already has):
//! Debian's `chromium` and `chromedriver`, started per test on a free port and stopped
//! when the [`Browser`] is dropped. `OMOI_CHROMEDRIVER` and `OMOI_CHROMIUM` name other
//! binaries. Without them the test fails, saying what to install: a browser test is never
//! skipped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long [`Browser::wait_for`] waits by default.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The WebDriver error of an element the page has replaced since it was found.
const STALE_ELEMENT: &str = "stale element reference";

pub struct Browser {
    client: reqwest::Client,
    session: String,
    _driver: Child,
}

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

fn binary(variable: &str, candidates: &[&str]) -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var(variable) {
        return Ok(PathBuf::from(path));
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow!(
                "no {} found ({}); install Debian's chromium and chromium-driver \
                 (scripts/test does, as root) or set {variable}",
                candidates[0],
                candidates.join(", ")
            )
        })
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a 1400×900 window.
    pub async fn start() -> anyhow::Result<Self> {
        let driver_path = binary(
            "OMOI_CHROMEDRIVER",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        )?;
        let chromium = binary(
            "OMOI_CHROMIUM",
            &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        )?;
        let port = crate::free_port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", driver_path.display()))?;
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            let ready = client.get(format!("{base}/status")).send().await;
            if let Ok(response) = ready {
                let status: Value = response.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("chromedriver did not become ready on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut args = vec![
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
            "--no-first-run",
            "--lang=en-US",
        ];
        // Chromium's sandbox refuses to run as root (CI runs as root).
        if running_as_root() {
            args.push("--no-sandbox");
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let response: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await?
            .json()
            .await?;
        let session = response["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("chromedriver refused the session: {response}"))?
            .to_string();
        Ok(Self {
            client,
            session: format!("{base}/session/{session}"),
            _driver: driver,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request.send().await?.json().await?;
        if let Some(error) = response["value"]["error"].as_str() {
            bail!(
                "WebDriver {path}: {error}: {}",
                response["value"]["message"]
            );
        }
        Ok(response["value"].clone())
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.post("/url", json!({"url": url})).await.map(drop)
    }

    pub async fn current_url(&self) -> anyhow::Result<String> {
        let value = self.call(reqwest::Method::GET, "/url", None).await?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    /// Deletes the page's cookie `name` (an HttpOnly one too, which the page cannot).
    pub async fn delete_cookie(&self, name: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, &format!("/cookie/{name}"), None)
            .await
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    /// The first element matching `css`, waiting up to [`PATIENCE`] for it to appear.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        let started = Instant::now();
        loop {
            let found = self
                .post("/element", json!({"using": "css selector", "value": css}))
                .await;
            match found {
                Ok(value) => {
                    let id = value[ELEMENT]
                        .as_str()
                        .ok_or_else(|| anyhow!("not an element: {value}"))?;
                    return Ok(Element(id.to_string()));
                }
                Err(_) if started.elapsed() < PATIENCE => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(error.context(format!("no element matches {css}"))),
            }
        }
    }

    /// Waits until `condition` (a script's expression, e.g. `document.title === "x"`) is
    /// true, up to `patience`; the error says what was awaited.
    pub async fn wait_for(&self, condition: &str, patience: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let script = format!("return Boolean({condition});");
        loop {
            if self.execute(&script, vec![]).await? == Value::Bool(true) {
                return Ok(());
            }
            if started.elapsed() > patience {
                bail!("waited {patience:?} for `{condition}`");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Signs in through the app's form on the page it shows (the sign-in page, or the one
    /// any address of the app redirects to) and waits, up to `patience`, for the app (or,
    /// for a person of no project yet, its "Your first project" form).
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        patience: Duration,
    ) -> anyhow::Result<()> {
        let field = self.find("input[name=email]").await?;
        self.type_into(&field, email).await?;
        let field = self.find("input[name=password]").await?;
        self.type_into(&field, password).await?;
        self.click_css("form.signin button[type=submit]").await?;
        let app = "document.querySelector('header.topbar') \
                   || document.querySelector('input[name=organization]')";
        self.wait_for(app, patience).await
    }

    async fn click(&self, element: &Element) -> anyhow::Result<()> {
        self.post(&format!("/element/{}/click", element.0), json!({}))
            .await
            .map(drop)
    }

    /// Clicks the first element matching `css`, waiting up to [`PATIENCE`] for it. A
    /// screen that renders again between finding the element and clicking it (a live
    /// update arriving) leaves the element found stale: it is found again, not failed on.
    pub async fn click_css(&self, css: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let element = self.find(css).await?;
            match self.click(&element).await {
                Err(error)
                    if error.to_string().contains(STALE_ELEMENT)
                        && started.elapsed() < PATIENCE => {}
                clicked => return clicked,
            }
        }
    }

    pub async fn type_into(&self, element: &Element, text: &str) -> anyhow::Result<()> {
        self.post(
            &format!("/element/{}/value", element.0),
            json!({"text": text}),
        )
        .await
        .map(drop)
    }

    pub async fn clear(&self, element: &Element) -> anyhow::Result<()> {
        self.post(&format!("/element/{}/clear", element.0), json!({}))
            .await
            .map(drop)
    }

    /// Presses a key combination: `keys` are WebDriver key codes or characters, pressed in
    /// order and released in reverse (e.g. `["\u{E009}", "k"]` for Ctrl+K).
    pub async fn press(&self, keys: &[&str]) -> anyhow::Result<()> {
        let mut actions: Vec<Value> = keys
            .iter()
            .map(|k| json!({"type": "keyDown", "value": k}))
            .collect();
        actions.extend(
            keys.iter()
                .rev()
                .map(|k| json!({"type": "keyUp", "value": k})),
        );
        self.post(
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        )
        .await
        .map(drop)
    }

    /// Drags `from` onto `to` with the mouse: press on `from`'s centre, move in steps to
    /// `to`'s centre, release.
    pub async fn drag(&self, from: &Element, to: &Element) -> anyhow::Result<()> {
        let origin = |e: &Element| json!({ELEMENT: e.0});
        let actions = json!({"actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [
                {"type": "pointerMove", "origin": origin(from), "x": 0, "y": 0},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerMove", "origin": origin(from), "x": 12, "y": 12, "duration": 50},
                {"type": "pointerMove", "origin": origin(to), "x": 0, "y": 0, "duration": 250},
                {"type": "pointerUp", "button": 0},
            ],
        }]});
        self.post("/actions", actions).await?;
        self.call(reqwest::Method::DELETE, "/actions", None)
            .await
            .map(drop)
    }

    /// Writes a PNG of the window to `path` (parents created).
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let value = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let encoded = value.as_str().ok_or_else(|| anyhow!("no screenshot"))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, decode_base64(encoded)?)?;
        Ok(())
    }

    /// Ends the session (the driver process ends with the value).
    pub async fn quit(self) {
        let _ = self.call(reqwest::Method::DELETE, "", None).await;
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Standard base64 (WebDriver's screenshots), without a dependency for one use.
fn decode_base64(text: &str) -> anyhow::Result<Vec<u8>> {
    let value = |c: u8| -> anyhow::Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            other => bail!("not base64: {:?}", other as char),
        } as u32)
    };
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut group = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            group |= value(*c)? << (18 - 6 * i);
        }
        let produced = chunk.len().saturating_sub(1);
        for i in 0..produced {
            out.push((group >> (16 - 8 * i)) as u8);
        }
    }
    Ok(out)
}

/// Where the browser tests put their screenshots: `target/screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    crate::target_dir().join("screenshots")
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn base64_decodes_every_padding() {
        assert_eq!(decode_base64("aGVsbG8=").expect("valid base64"), b"hello");
        assert_eq!(decode_base64("aGVsbG8h").expect("valid base64"), b"hello!");
        assert_eq!(decode_base64("aGk=").expect("valid base64"), b"hi");
        assert_eq!(decode_base64("").expect("valid base64"), b"");
        assert!(decode_base64("a*==").is_err());
    }
}
