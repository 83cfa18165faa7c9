//! Talking to `weir serve --http` and `weir http` in the binary tests: one HTTP/1.1 exchange
//! over a plain socket (no client library to build), and starting a server on port 0 and
//! reading the address it bound from its log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{spawn_logged, text, wait_for, Serving, Weir};

const LONG: Duration = Duration::from_secs(30);

/// One HTTP/1.1 exchange over a fresh connection: (status, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("the API accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = text(&raw);
    let (head, rest) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The address a `weir serve --http 127.0.0.1:0` (or `weir http`) bound, from its log.
pub fn bound(log: &Arc<Mutex<String>>) -> String {
    wait_for("the API to listen", LONG, || {
        let l = log.lock().unwrap();
        l.lines()
            .find(|l| l.contains("HTTP API listening"))
            .and_then(|l| l.split("addr=").nth(1))
            .map(|a| a.split_whitespace().next().unwrap_or("").to_owned())
            .ok_or_else(|| l.clone())
    })
}

pub fn serve_http(w: &Weir, env: &[(&str, &str)]) -> (Serving, String) {
    serve_http_with(w, &[], env)
}

/// `weir serve --tick 1s --http 127.0.0.1:0` with more `args` (after `serve`) and `env`.
pub fn serve_http_with(w: &Weir, args: &[&str], env: &[(&str, &str)]) -> (Serving, String) {
    let mut c = w.cmd(&[]);
    c.args([
        "--log",
        "info",
        "serve",
        "--tick",
        "1s",
        "--http",
        "127.0.0.1:0",
    ])
    .args(args)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let (serving, log) = spawn_logged(c);
    let addr = bound(&log);
    (serving, addr)
}
