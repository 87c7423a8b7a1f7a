//! Test support: a `Node` (a data folder with identity and NSK), a `TestDaemon` (the real
//! binary started with `serve` flags on that folder), a development control plane as
//! the upstream, and a tiny raw HTTP client over Unix and TCP sockets.
//!
//! Nothing here mocks the daemon's parts: requests go over real sockets to a real
//! process writing real files.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use plexd_nodeapi::devcp::{DevConfig, DevControlPlane};
use plexd_nodeapi::secrets::nsk::Nsk;

pub const NSK_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
pub const NODE_ID: &str = "n_test";

/// Names the daemon binary under test instead of the one cargo built (for example a
/// cross-built ARM binary).
pub const BIN_ENV: &str = "PLEXD_NODEAPI_BIN";
/// A command that runs the binary, split on whitespace and put before it (for example
/// `qemu-arm-static` or `qemu-arm-static -L /usr/arm-linux-gnueabihf`).
pub const RUNNER_ENV: &str = "PLEXD_NODEAPI_RUNNER";

/// The binary under test: `$PLEXD_NODEAPI_BIN`, or the one cargo built.
pub fn bin() -> PathBuf {
    std::env::var_os(BIN_ENV)
        .filter(|p| !p.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_plexd-nodeapi")),
            PathBuf::from,
        )
}

/// The runner words from `$PLEXD_NODEAPI_RUNNER` (empty: the binary runs natively).
pub fn runner() -> Vec<String> {
    std::env::var(RUNNER_ENV)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// A `Command` that starts the binary under test, through the runner if one is set.
/// Every test starts the daemon or the `state` client through this.
pub fn command() -> Command {
    let mut words = runner().into_iter();
    match words.next() {
        Some(emulator) => {
            let mut cmd = Command::new(emulator);
            cmd.args(words).arg(bin());
            cmd
        }
        None => Command::new(bin()),
    }
}

/// True when the binary runs under a runner (an emulator such as qemu-user): the
/// process's threads and timing are then the emulator's, not the daemon's.
pub fn emulated() -> bool {
    !runner().is_empty()
}

/// For tests that measure threads or timing: under an emulator, prints why the test is
/// skipped and returns true.
pub fn skip_if_emulated(what: &str) -> bool {
    if emulated() {
        eprintln!(
            "skipped under {}: {what}",
            std::env::var(RUNNER_ENV).unwrap_or_default()
        );
    }
    emulated()
}

/// A node's data folder: identity.json and node_secret_key, like plexd writes them.
pub struct Node {
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("identity.json"),
            format!("{{\"node_id\":\"{NODE_ID}\"}}"),
        )
        .unwrap();
        std::fs::write(dir.path().join("node_secret_key"), NSK_HEX).unwrap();
        Node { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    pub fn nsk() -> Nsk {
        Nsk::parse(NSK_HEX.as_bytes()).unwrap()
    }

    /// A development control plane for this node (token = the NSK file's text).
    pub fn control_plane(&self, demo: bool) -> DevControlPlane {
        dev_cp(([127, 0, 0, 1], 0).into(), demo)
    }

    pub fn daemon(&self) -> DaemonBuilder<'_> {
        DaemonBuilder {
            node: self,
            args: Vec::new(),
            envs: Vec::new(),
            journal: false,
            socket: None,
        }
    }
}

pub fn dev_cp(listen: SocketAddr, demo: bool) -> DevControlPlane {
    DevControlPlane::start(DevConfig {
        listen,
        node_id: NODE_ID.to_owned(),
        nsk: Node::nsk(),
        token: NSK_HEX.to_owned(),
        demo,
        signing_seed: None,
    })
    .expect("start development control plane")
}

pub struct DaemonBuilder<'a> {
    node: &'a Node,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// Make the log file look like the journal to the daemon (`JOURNAL_STREAM`).
    journal: bool,
    socket: Option<PathBuf>,
}

impl DaemonBuilder<'_> {
    /// Serves on `path` instead of the node's `api.sock`.
    pub fn socket(mut self, path: &Path) -> Self {
        self.socket = Some(path.to_owned());
        self
    }

    /// Sets an environment variable for the daemon process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets `JOURNAL_STREAM` to the device and inode of the daemon's stderr (its log
    /// file), as systemd does for a service logging to the journal.
    pub fn journal_stream(mut self) -> Self {
        self.journal = true;
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    /// Enables the TCP listener on a free loopback port with `token` as its bearer token
    /// (written to a file in the node's folder).
    pub fn http_with_token(self, token: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let token_file = self.node.path().join("http-token");
        std::fs::write(&token_file, format!("{token}\n")).expect("token file");
        let addr = format!("127.0.0.1:{port}");
        let file = token_file.to_string_lossy().into_owned();
        self.args([
            "--http-listen".to_owned(),
            addr,
            "--http-token-file".to_owned(),
            file,
        ])
    }

    pub fn control_plane(self, cp: &DevControlPlane) -> Self {
        let url = cp.url();
        self.args(["--control-plane".to_owned(), url])
    }

    /// Starts `serve` and waits until the socket answers.
    pub fn start(self) -> TestDaemon {
        let d = self.spawn();
        d.wait_ready();
        d
    }

    /// Starts `serve` without waiting.
    pub fn spawn(self) -> TestDaemon {
        let log = self.node.path().join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let log_file = std::fs::File::create(&log).unwrap();
        let socket = self.socket.clone().unwrap_or_else(|| self.node.socket());
        let mut cmd = command();
        if self.journal {
            use std::os::unix::fs::MetadataExt;
            let meta = log_file.metadata().unwrap();
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.node.path())
            .arg("--socket")
            .arg(&socket)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if !self.args.iter().any(|a| a == "--log-level") {
            cmd.args(["--log-level", "debug"]);
        }
        let child = cmd.spawn().expect("spawn daemon");
        let tcp = self
            .args
            .iter()
            .position(|a| a == "--http-listen")
            .and_then(|i| self.args.get(i + 1))
            .and_then(|a| a.parse().ok());
        TestDaemon {
            child: Some(child),
            socket,
            log,
            tcp,
        }
    }
}

pub struct TestDaemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub tcp: Option<SocketAddr>,
}

impl TestDaemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(r) = try_request(&self.socket, "GET", "/v1/state", &[], None) {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not become ready; log:\n{}", self.log_text());
    }

    /// The `/metrics` page.
    pub fn metrics(&self) -> String {
        self.get("/metrics").text()
    }

    /// The value of one metric sample (`name{labels}` as written), if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.metrics(), series)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[], None)
    }

    pub fn put(&self, path: &str, body: &str) -> Resp {
        self.req("PUT", path, &[], Some(body.as_bytes()))
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.req("DELETE", path, &[], None)
    }

    pub fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        try_request(&self.socket, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; log:\n{}", self.log_text()))
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_bounded(&mut child, Duration::from_secs(20))
    }

    /// SIGKILL, no goodbye.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        wait_bounded(&mut child, limit)
    }
}

fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

/// One request on a fresh Unix connection.
pub fn try_request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Resp> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    // A server may answer (413, 400) and close before taking the whole body; like curl,
    // read its answer even when the write fails.
    let written = s.write_all(&request_bytes(method, path, headers, body));
    match read_response(&mut s, method == "HEAD") {
        Ok(r) => Ok(r),
        Err(e) => Err(written.err().unwrap_or(e)),
    }
}

/// One request on a fresh TCP connection.
pub fn tcp_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("tcp connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&request_bytes(method, path, headers, body))
        .unwrap();
    read_response(&mut s, method == "HEAD").expect("tcp response")
}

/// Reads one response (Content-Length framed, or until EOF) from a stream.
pub fn read_response(s: &mut impl Read, head_only: bool) -> std::io::Result<Resp> {
    ResponseReader::new(s).next(head_only)
}

/// Reads successive responses from one connection (pipelining), keeping bytes that
/// belong to the next response.
pub struct ResponseReader<S: Read> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: Read> ResponseReader<S> {
    pub fn new(stream: S) -> Self {
        ResponseReader {
            stream,
            buf: Vec::new(),
        }
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    pub fn next(&mut self, head_only: bool) -> std::io::Result<Resp> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Response::new(&mut headers);
                r.parse(&self.buf[..end + 4])
                    .map_err(|e| std::io::Error::other(format!("bad response: {e}")))?;
                let status = r.code.unwrap_or(0);
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let len = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.parse::<usize>().ok());
                let start = end + 4;
                let want = if head_only
                    || status == 204
                    || status == 304
                    || (100..200).contains(&status)
                {
                    Some(0)
                } else {
                    len
                };
                loop {
                    let have = self.buf.len() - start;
                    if let Some(w) = want {
                        if have >= w {
                            let body = self.buf[start..start + w].to_vec();
                            self.buf.drain(..start + w);
                            return Ok(Resp {
                                status,
                                headers,
                                body,
                            });
                        }
                    }
                    if self.fill()? == 0 {
                        if want.is_none() {
                            let body = self.buf[start..].to_vec();
                            self.buf.clear();
                            return Ok(Resp {
                                status,
                                headers,
                                body,
                            });
                        }
                        return Err(std::io::Error::other("connection closed mid-body"));
                    }
                }
            }
            if self.fill()? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before a response",
                ));
            }
        }
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// The value of sample `series` (`name{labels}` exactly as written) in a metrics page.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The number of threads of process `pid`.
pub fn threads_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("proc status")
        .lines()
        .find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
        .expect("Threads line")
}

/// A host group a test needs: the existing one, or one the test adds (`groupadd
/// --system`) and removes again when the guard is dropped — also when the test fails.
/// A group that existed before is never removed.
pub struct TempGroup {
    pub name: &'static str,
    pub gid: u32,
    created: bool,
}

impl TempGroup {
    /// The group `name`, added if missing (which needs root).
    pub fn ensure(name: &'static str) -> Result<TempGroup, String> {
        let find = || {
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        };
        if let Some(gid) = find() {
            return Ok(TempGroup {
                name,
                gid,
                created: false,
            });
        }
        let added = Command::new("groupadd")
            .args(["--system", name])
            .status()
            .map_err(|e| format!("groupadd {name}: {e}"))?;
        // Added, or added by a concurrent test in between (then it is that test's).
        let created = added.success();
        match find() {
            Some(gid) => Ok(TempGroup { name, gid, created }),
            None => Err(format!("groupadd {name}: {added}")),
        }
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        if self.created {
            let _ = Command::new("groupdel").arg(self.name).status();
        }
    }
}

/// `plexd-nodeapi dev`, started as `make run` starts it (with `--http` on a free
/// loopback port, in a data folder of the test's), its banner read; killed when
/// dropped unless `interrupt` ended it.
pub struct DevRun {
    child: Child,
    /// Everything dev printed up to its last paste-able command.
    pub banner: String,
}

impl DevRun {
    /// Starts dev in `data` and waits (30 s at most) for its whole banner.
    pub fn start(data: &Path) -> DevRun {
        use std::io::BufRead;
        let mut child = command()
            .args(["dev", "--data-dir"])
            .arg(data)
            .args(["--http", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dev");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("dev's stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut run = DevRun {
            child,
            banner: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !run.banner.contains("events_rejected_total") {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("the banner within 30 s");
            run.banner.push_str(&line);
            run.banner.push('\n');
        }
        run
    }

    /// The value the banner prints after `label` (`"socket:"`, `"development control
    /// plane:"`, `"TCP listener:"`, `"token:"`, …), up to the next space.
    pub fn banner_value(&self, label: &str) -> String {
        let at = self
            .banner
            .find(label)
            .unwrap_or_else(|| panic!("{label} in the banner:\n{}", self.banner));
        self.banner[at + label.len()..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// Ctrl-C, as a user stops it; its exit status (20 s at most).
    pub fn interrupt(mut self) -> ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT to dev");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for dev") {
                return status;
            }
            assert!(Instant::now() < deadline, "dev did not stop on Ctrl-C");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DevRun {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
