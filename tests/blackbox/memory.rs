//! Plaintext hygiene, checked on the live process: after many secret fetches the
//! daemon's memory holds no copy of the secret value, and the node secret key and the
//! tokens once each, where the daemon keeps them on purpose. Memory is read through
//! `/proc/PID/mem` (the daemon runs with `--allow-core-dumps` so that the test may read
//! it without root); without the flag the process is not dumpable.

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use crate::common::*;

/// A value no other process or file holds: 24 random bytes in hex.
fn unique(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// Writable memory regions of `pid` (heap, stacks, anonymous mappings, .data/.bss):
/// where anything the process computed can be.
fn writable_regions(pid: u32) -> Vec<(u64, u64, String)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let range = parts.next()?;
            let perms = parts.next()?;
            if !perms.starts_with("rw") || line.ends_with("[vvar]") {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let name = parts.nth(3).unwrap_or("anonymous").to_owned();
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
                name,
            ))
        })
        .collect()
}

/// Where each needle occurs in the writable memory of `pid`: the address and the
/// mapping it lies in.
fn find_in_memory(pid: u32, needles: &[&[u8]]) -> Vec<Vec<String>> {
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("read /proc/PID/mem");
    let mut first = [false; 256];
    for n in needles {
        first[usize::from(n[0])] = true;
    }
    let mut found = vec![Vec::new(); needles.len()];
    for (start, end, name) in writable_regions(pid) {
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        for i in 0..buf.len() {
            if !first[usize::from(buf[i])] {
                continue;
            }
            for (n, needle) in needles.iter().enumerate() {
                if buf[i..].starts_with(needle) {
                    found[n].push(format!("{:#x} in {name}", start + i as u64));
                }
            }
        }
    }
    found
}

#[test]
fn fifty_secret_fetches_leave_no_copy_of_the_value_in_memory() {
    if skip_if_emulated("reads the daemon's memory through /proc/PID/mem") {
        return;
    }
    let node = Node::new();
    let cp = node.control_plane(false);
    let value = unique("value");
    cp.set_secret("db-password", &value);
    let http_token = unique("token");
    let d = node
        .daemon()
        .control_plane(&cp)
        .http_with_token(&http_token)
        .arg("--allow-core-dumps")
        .args(["--log-level", "info"])
        .start();
    let tcp = d.tcp.expect("tcp listener");
    let auth = format!("Bearer {http_token}");
    for i in 0..50 {
        let r = if i % 2 == 0 {
            d.get("/v1/state/secrets/db-password")
        } else {
            tcp_request(
                tcp,
                "GET",
                "/v1/state/secrets/db-password",
                &[("Authorization", &auth)],
                None,
            )
        };
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["value"], value.as_str());
        // Other traffic in between, reusing the buffers the secret passed through.
        let other = tcp_request(tcp, "GET", "/v1/state", &[("Authorization", &auth)], None);
        assert_eq!(other.status, 200);
    }
    // A moment for the threads to go idle; then read the memory as it is.
    std::thread::sleep(Duration::from_millis(300));
    let nsk = Node::nsk();
    let needles: [&[u8]; 4] = [
        value.as_bytes(),
        &nsk.as_bytes()[..],
        NSK_HEX.as_bytes(),
        http_token.as_bytes(),
    ];
    let found = find_in_memory(d.pid(), &needles);
    for (what, at) in ["secret value", "NSK", "control-plane token", "HTTP token"]
        .iter()
        .zip(&found)
    {
        eprintln!("{what}: {} copies {at:?}", at.len());
    }
    assert!(found[0].is_empty(), "the secret value stayed in memory");
    // One copy each, where the daemon keeps them: the key that opens secrets, the
    // `Bearer` value of the control-plane client (shared with the event stream) and
    // the token the TCP listener compares with. Nothing else: no freed buffer, no
    // stale stack frame, no request buffer of the HTTP core.
    assert_eq!(found[1].len(), 1, "copies of the NSK");
    assert_eq!(found[2].len(), 1, "copies of the control-plane token");
    assert_eq!(found[3].len(), 1, "copies of the HTTP token");
    assert!(d.log_text().contains("--allow-core-dumps"));
    assert!(!d.log_text().contains(&value));
}

#[test]
fn without_the_flag_the_core_limit_is_zero() {
    if skip_if_emulated("checks the daemon's own process limits") {
        return;
    }
    let core_limit = |pid: u32| {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .expect("core limit line")
            .to_owned();
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        (words[4].clone(), words[5].clone())
    };
    let node = Node::new();
    let d = node.daemon().start();
    assert_eq!(core_limit(d.pid()), ("0".to_owned(), "0".to_owned()));
    assert!(!d.log_text().contains("--allow-core-dumps"));
    drop(d);
    // The flag leaves the limits as the daemon found them.
    let mine = core_limit(std::process::id());
    let d = node.daemon().arg("--allow-core-dumps").start();
    assert_eq!(core_limit(d.pid()), mine);
}
