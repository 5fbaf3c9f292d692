//! The HTTP surface as a careless or hostile client meets it: bodies that are
//! malformed, too large or too slow, slow or idle connections, and too many of them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use plughost_test_support::{TestServer, artifacts};
use serde_json::json;

use super::BIN;
use super::server::{add_step, query, register, server_with};

fn connect(s: &TestServer) -> TcpStream {
    let addr = s.url.trim_start_matches("http://");
    TcpStream::connect(addr).unwrap()
}

/// Reads until the server closes the connection (or `limit` passes); returns what came.
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&got).into_owned());
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn bodies_that_are_broken_too_large_or_too_slow_get_their_own_errors() {
    let s = TestServer::start_with(
        BIN,
        &[("PLUGHOST_HTTP_BODY_TIMEOUT_MS", "400"), ("PLUGHOST_HTTP_HEADER_TIMEOUT_MS", "30000")],
    );
    s.put("/api/v1/metadata/entities/account", &json!({"attributes": {"name": "text"}})).expect(200);
    // A body cut short: the client says 100 bytes, sends 10 and stops writing.
    let mut c = connect(&s);
    let path = "/api/v1/entities/account";
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\": ",
        s.token
    )
    .unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let answer = read_to_close(&mut c, Duration::from_secs(30)).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("bad_body"), "{answer}");
    assert!(!answer.contains("payload_too_large"), "{answer}");
    // A body that stalls: 408 once the body timeout passes.
    let mut c = connect(&s);
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        s.token
    )
    .unwrap();
    let answer = read_to_close(&mut c, Duration::from_secs(30)).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("body_timeout"), "{answer}");
    // An upload over the limit is refused before it is sent, saying its size and the limit.
    let mut c = connect(&s);
    let size = (64u64 << 20) + 1;
    write!(
        c,
        "POST /api/v1/assemblies?name=big HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/wasm\r\nContent-Length: {size}\r\n\r\n",
        s.token
    )
    .unwrap();
    let answer = read_to_close(&mut c, Duration::from_secs(30)).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("payload_too_large"), "{answer}");
    assert!(answer.contains(&format!("the body is {size} bytes")) && answer.contains("max_assembly_bytes"), "{answer}");
    assert!(query(&s, "account").is_empty());
}

#[test]
fn slow_and_idle_connections_are_closed_and_connections_are_bounded() {
    let s = TestServer::start_with(
        BIN,
        &[("PLUGHOST_HTTP_HEADER_TIMEOUT_MS", "500"), ("PLUGHOST_HTTP_MAX_CONNECTIONS", "2")],
    );
    // Headers that never finish: the server closes the connection.
    let mut slow = connect(&s);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n").unwrap();
    assert!(read_to_close(&mut slow, Duration::from_secs(30)).is_some(), "a slow client was not cut off");
    // A kept-alive connection that goes idle after its request: closed too.
    let mut idle = connect(&s);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let answer = read_to_close(&mut idle, Duration::from_secs(30)).expect("the idle connection was not closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Two open connections use up a limit of 2: a third waits, and is served once one closes.
    let s = TestServer::start_with(
        BIN,
        &[("PLUGHOST_HTTP_HEADER_TIMEOUT_MS", "30000"), ("PLUGHOST_HTTP_MAX_CONNECTIONS", "2")],
    );
    let held: Vec<TcpStream> = (0..2).map(|_| connect(&s)).collect();
    // Let the server accept both before the third arrives.
    let mut probe = connect(&s);
    probe.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    assert!(read_to_close(&mut probe, Duration::from_millis(700)).is_none(), "a third connection was served at once");
    drop(held);
    let started = Instant::now();
    let answer = read_to_close(&mut probe, Duration::from_secs(30)).expect("served once a connection closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "after {:?}: {answer}", started.elapsed());
}

#[test]
fn a_request_whose_writes_pass_the_write_limit_fails_with_its_own_code_and_stores_nothing() {
    let s = server_with(&[]);
    s.put("/api/v1/metadata/entities/blob", &json!({"attributes": {"body": "text"}})).expect(200);
    register(&s, artifacts::HOSTILE, "hostile", &[]);
    // Records of 1 MiB, against a write limit of 4 MiB for the step.
    add_step(
        &s,
        json!({"plugin": "hostile", "message": "Create", "entity": "account", "stage": "pre-operation",
               "configuration": "big-writes:1024", "limits": {"write_bytes": 4194304}}),
    );
    let r = s.post("/api/v1/entities/account", &json!({"name": "A"}));
    assert_eq!((r.status, r.code()), (500, "write_limit"), "{}", r.body);
    let m = r.body["error"]["message"].as_str().unwrap();
    assert!(m.contains("write limit of") && !m.contains("backtrace"), "{m}");
    assert!(query(&s, "blob").is_empty() && query(&s, "account").is_empty(), "nothing of it is stored");
    // The same as a job: it fails with the same code.
    let step = s.get("/api/v1/steps").expect(200)[0]["id"].as_str().unwrap().to_owned();
    s.delete(&format!("/api/v1/steps/{step}")).expect(200);
    add_step(
        &s,
        json!({"plugin": "hostile", "name": "writer", "message": "acme_Write", "stage": "post-operation", "mode": "asynchronous",
               "configuration": "big-writes:1024", "limits": {"write_bytes": 4194304}}),
    );
    s.post("/api/v1/jobs", &json!({"step": "writer"})).expect(201);
    let jobs = super::queue::wait_jobs(&s, |j| j.len() == 1 && super::queue::completed(j));
    assert_eq!(
        (jobs[0]["status"].as_str(), jobs[0]["error_code"].as_str()),
        (Some("Failed"), Some("write_limit")),
        "{}",
        jobs[0]
    );
    assert!(query(&s, "blob").is_empty());
}
