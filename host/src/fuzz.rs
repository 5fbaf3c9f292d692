//! Fuzzed inputs: every parser user input reaches gets a fixed number of generated
//! cases (seeded, so a failure names a case that replays), each asserting "a clear
//! error or a valid result, never a panic, nothing stored on error". Runs with the
//! unit tests on stable Rust; `FUZZ_CASES` multiplies the counts for a longer run.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::bulk::{ImportFormat, parse_import};
use crate::jobs::JobQuery;
use crate::metadata::{AttributeType, EntityDefinition};
use crate::model::{Entity, Query, Value};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes that parsers find interesting.
const SPICE: &[&[u8]] = &[
    b"",
    b"0",
    b"-1",
    b"\"",
    b"'",
    b",",
    b";",
    b"=",
    b":",
    b"\n",
    b"\r\n",
    b"\0",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\\",
    b"null",
    b"true",
    b"1e999",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"\xff\xfe",
    b"\xe2\x82\xac",
    b"FREQ=",
    b"COUNT=",
    b"UNTIL=",
    b"BYDAY=",
    b"id:",
    b"offset:",
    b"{\"money\":",
    b"{\"reference\":",
    b"NaN",
];

/// One random edit of `bytes`: flip, insert, delete, duplicate a span, or splice spice.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    let at = rng.below(bytes.len() + 1);
    match rng.below(6) {
        0 if !bytes.is_empty() => {
            let i = rng.below(bytes.len());
            bytes[i] ^= 1 << rng.below(8);
        }
        1 => bytes.insert(at, rng.next() as u8),
        2 if !bytes.is_empty() => {
            let end = (at + 1 + rng.below(8)).min(bytes.len());
            bytes.drain(at.min(end)..end);
        }
        3 if !bytes.is_empty() => {
            let from = rng.below(bytes.len());
            let end = (from + 1 + rng.below(16)).min(bytes.len());
            let span = bytes[from..end].to_vec();
            bytes.splice(at..at, span);
        }
        _ => {
            let spice = rng.pick(SPICE);
            bytes.splice(at..at, spice.iter().copied());
        }
    }
}

/// A seed with 1–4 random edits.
fn variant(rng: &mut Rng, seeds: &[&[u8]]) -> Vec<u8> {
    let mut b = rng.pick(seeds).to_vec();
    for _ in 0..=rng.below(4) {
        mutate(rng, &mut b);
    }
    b
}

/// A variant as text (lossy: what a text field would receive).
fn text_variant(rng: &mut Rng, seeds: &[&[u8]]) -> String {
    String::from_utf8_lossy(&variant(rng, seeds)).into_owned()
}

fn cases(base: usize) -> usize {
    base * std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

/// Runs `case` `n` times with seeded generators; a panic fails naming its case.
fn run(name: &str, n: usize, mut case: impl FnMut(&mut Rng)) {
    for i in 0..n {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1).wrapping_mul(0x1000_0000_01B3));
        if catch_unwind(AssertUnwindSafe(|| case(&mut rng))).is_err() {
            panic!("{name}: case {i} panicked");
        }
    }
    eprintln!("fuzz {name}: {n} cases");
}

/// A clear error: something a person can read.
fn clear(e: &str) -> bool {
    !e.trim().is_empty()
}

#[test]
fn rrules() {
    let seeds: &[&[u8]] = &[
        b"FREQ=DAILY;COUNT=3",
        b"FREQ=WEEKLY;BYDAY=MO,WE,FR;UNTIL=20270101T000000Z",
        b"FREQ=MINUTELY;INTERVAL=15",
        b"FREQ=MONTHLY;BYMONTHDAY=31;BYHOUR=9;BYMINUTE=30",
        b"FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29",
        b"FREQ=HOURLY",
    ];
    run("rrule", cases(3000), |rng| {
        let text = text_variant(rng, seeds);
        let start = 1_790_000_000_000 + rng.below(1 << 30) as i64;
        match crate::recurrence::validate(&text, start) {
            Ok(()) => {
                // Valid means usable: the next occurrence can be computed.
                let next = crate::recurrence::next_after(&text, start, start);
                assert!(next.is_ok(), "{text:?} validated but next_after failed: {next:?}");
            }
            Err(e) => assert!(clear(&e), "{text:?}"),
        }
    });
}

fn definition() -> EntityDefinition {
    let attributes = [
        ("name", AttributeType::Text),
        ("size", AttributeType::Integer),
        ("ratio", AttributeType::Float),
        ("price", AttributeType::Decimal),
        ("limit", AttributeType::Money),
        ("active", AttributeType::Boolean),
        ("due", AttributeType::Datetime),
        ("ref", AttributeType::Reference),
        ("key", AttributeType::Guid),
        ("kind", AttributeType::Option),
    ];
    EntityDefinition {
        name: "account".into(),
        attributes: attributes.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect(),
    }
}

#[test]
fn csv_and_json_lines_imports() {
    let def = definition();
    let csv: &[&[u8]] = &[
        b"name,size,limit,active,due\nContoso,5,12.50,true,2026-01-31T09:30:00Z\n",
        b"name,price,kind\n\"Quoted, name\",1.5,3\nOther,,\n",
        b"name,key\nA,6d1b1a9e-7f0e-4a57-9d0a-3c1e5c1f1a01\n",
    ];
    let jsonl: &[&[u8]] = &[
        b"{\"name\": \"A\", \"size\": 1}\n{\"name\": \"B\", \"limit\": {\"money\": \"2.00\"}}\n",
        b"{\"ref\": {\"reference\": {\"logical_name\": \"account\", \"id\": \"6d1b1a9e-7f0e-4a57-9d0a-3c1e5c1f1a01\"}}}\n",
        b"{\"due\": {\"datetime\": \"2026-01-31T09:30:00Z\"}, \"ratio\": 0.5}\n",
    ];
    for (format, seeds) in [(ImportFormat::Csv, csv), (ImportFormat::Jsonl, jsonl)] {
        run(&format!("import {format:?}"), cases(2000), |rng| {
            let bytes = variant(rng, seeds);
            match parse_import(&def, format, &bytes) {
                // Each row, read as the entity's types when the job runs it, is a
                // valid record or that row's own clear error (the file is not refused
                // for one bad cell).
                Ok(rows) => {
                    for row in rows {
                        let checked = crate::bulk::typed_row(&def, row).and_then(|mut r| def.check_record(&mut r));
                        if let Err(e) = checked {
                            assert!(clear(&e));
                        }
                    }
                }
                Err(e) => assert!(clear(&e)),
            }
        });
    }
}

#[test]
fn json_values_queries_and_paging_cookies() {
    let records: &[&[u8]] = &[
        br#"{"name": "A", "size": 5, "limit": {"money": "12.50"}, "price": {"decimal": "-0.001"}}"#,
        br#"{"due": {"datetime": "2026-01-31T09:30:00Z"}, "key": {"guid": "6d1b1a9e-7f0e-4a57-9d0a-3c1e5c1f1a01"}, "kind": {"option": 3}}"#,
        br#"{"ownerid": {"reference": {"logical_name": "systemuser", "id": "6d1b1a9e-7f0e-4a57-9d0a-3c1e5c1f1a01"}}, "active": null}"#,
    ];
    let queries: &[&[u8]] = &[
        br#"{"entity_name": "account", "criteria": {"conditions": [{"attribute": "name", "operator": "like", "values": ["C%"]}]}, "orders": [{"attribute": "size", "descending": true}], "page_size": 2}"#,
        br#"{"entity_name": "account", "criteria": {"operator": "or", "groups": [{"conditions": [{"attribute": "limit", "operator": "greater_than", "values": [{"money": "1"}]}]}]}, "paging_cookie": "id:6d1b1a9e-7f0e-4a57-9d0a-3c1e5c1f1a01"}"#,
        br#"{"entity_name": "account", "criteria": {"conditions": [{"attribute": "size", "operator": "in", "values": [1, 2, 3]}]}, "top": 5, "paging_cookie": "offset:4"}"#,
    ];
    let def = definition();
    let sample = {
        let mut e = Entity::new("account");
        e.attributes.insert("name".into(), Value::Text("Contoso".into()));
        e.attributes.insert("size".into(), Value::Integer(5));
        e.attributes.insert("limit".into(), Value::Money("12.50".into()));
        e
    };
    run("record json", cases(2000), |rng| {
        let bytes = variant(rng, records);
        if let Ok(attributes) = serde_json::from_slice::<BTreeMap<String, Value>>(&bytes) {
            let mut e = Entity::new("account");
            e.attributes = attributes;
            // Either the record is refused with a reason, or it is one the entity takes.
            if let Err(m) = e.validate().and_then(|()| def.check_record(&mut e)) {
                assert!(clear(&m));
            }
        }
    });
    run("query json", cases(2000), |rng| {
        let bytes = variant(rng, queries);
        if let Ok(q) = serde_json::from_slice::<Query>(&bytes) {
            match crate::query::validate(&q).and_then(|()| crate::query::PageStart::of(&q).map(|_| ())) {
                Ok(()) => {
                    let _ = crate::query::matches(&sample, &q.criteria);
                    let mut page = vec![sample.clone(), sample.clone()];
                    crate::query::sort(&mut page, &q.orders);
                }
                Err(m) => assert!(clear(&m)),
            }
        }
    });
    run("paging cookie", cases(3000), |rng| {
        let seeds: &[&[u8]] = &[b"id:6d1b1a9e-7f0e-4a57-9d0a-3c1e5c1f1a01", b"offset:25", b"offset:0", b""];
        let cookie = text_variant(rng, seeds);
        let mut q = Query { entity_name: "account".into(), paging_cookie: Some(cookie), ..Query::default() };
        if rng.below(2) == 0 {
            q.orders.push(crate::model::Order { attribute: "name".into(), descending: false });
        }
        if let Err(m) = crate::query::PageStart::of(&q) {
            assert!(clear(&m));
        }
    });
}

#[test]
fn job_list_parameters() {
    let seeds: &[&[u8]] = &[
        b"WaitingForResources",
        b"30",
        b"2026-12-01T09:00:00Z",
        b"1790000000000",
        b"01a2",
        b"6d1b1a9e-7f0e-4a57-9d0a-3c1e5c1f1a01",
        b"newest",
        b"oldest",
        b"workflow",
        b"100",
        b"Failed",
    ];
    run("job filter", cases(3000), |rng| {
        let field = |rng: &mut Rng| (rng.below(3) != 0).then(|| text_variant(rng, seeds));
        let filter = crate::admin::JobFilter {
            status: field(rng),
            step: field(rng),
            operation_type: field(rng),
            plugin: None,
            entity: field(rng),
            record: field(rng),
            name: field(rng),
            token: field(rng),
            since: field(rng),
            until: field(rng),
            id_prefix: field(rng),
            after: field(rng),
            order: field(rng),
            limit: (rng.below(2) == 0).then(|| rng.next() as usize % 20_000),
        };
        match filter.query() {
            Ok(q) => {
                let q: JobQuery = q;
                assert!(q.page_size().is_ok() && q.id_range().is_ok());
            }
            Err(e) => assert!(clear(&e.to_string())),
        }
    });
}

#[test]
fn configuration_files() {
    let seeds: &[&[u8]] = &[
        b"listen = \"127.0.0.1:7171\"\nmax_body_bytes = 8388608\n[workers]\nworkers = 2\nlease_ms = 300000\n",
        b"[http]\nheader_timeout_ms = 10000\nmax_connections = 1024\nallowed_hosts = [\"a.example\"]\n",
        b"[limits]\nfuel = 10000000000\nmemory_bytes = 67108864\n[runtime]\npooling = true\n",
        b"store = \"postgres://u@h:5432/db\"\nstore_connections = 16\ninsecure = false\n",
    ];
    run("plughost.toml", cases(3000), |rng| {
        let text = text_variant(rng, seeds);
        if let Err(e) = crate::config::Config::from_toml(&text) {
            assert!(clear(&e));
        }
    });
}

#[test]
fn component_bytes_at_registration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = crate::store::Store::open(dir.path()).expect("store");
    let runtime = crate::runtime::Runtime::new(crate::runtime::RuntimeConfig::default(), None).expect("runtime");
    let valid = plughost_test_support::wasm(plughost_test_support::artifacts::ACCOUNT_NUMBER);
    let mut registered = 0;
    run("component bytes", cases(150), |rng| {
        let mut bytes = valid.clone();
        for _ in 0..=rng.below(3) {
            // Mutations anywhere: headers, sections, code.
            mutate(rng, &mut bytes);
        }
        let before = store.assemblies().expect("assemblies").len();
        match crate::registry::register(&store, &runtime, &bytes, "fuzzed", None, Vec::new()) {
            Ok(reg) => {
                registered += 1;
                assert_eq!(reg.assembly.hash, crate::model::AssemblyHash::of(&bytes));
            }
            Err(e) => {
                assert!(clear(&e.to_string()) && !e.code().is_empty());
                assert_eq!(store.assemblies().expect("assemblies").len(), before, "nothing stored on error");
            }
        }
    });
    eprintln!("fuzz component bytes: {registered} mutated components were still valid and registered");
}

/// What a fuzzed definition is validated against: the example's entities, one
/// plug-in, one user, no other workflows.
struct FuzzCatalog;

impl crate::workflow::Catalog for FuzzCatalog {
    fn entity(&self, name: &str) -> Option<EntityDefinition> {
        let attrs: &[(&str, AttributeType)] = match name {
            "incident" => &[
                ("title", AttributeType::Text),
                ("priority", AttributeType::Text),
                ("statecode", AttributeType::Option),
                ("statuscode", AttributeType::Option),
                ("customeremail", AttributeType::Text),
                ("resolution", AttributeType::Text),
                ("due", AttributeType::Datetime),
            ],
            "task" => &[("subject", AttributeType::Text), ("regardingobjectid", AttributeType::Reference)],
            "email" => &[("to", AttributeType::Text), ("subject", AttributeType::Text), ("body", AttributeType::Text)],
            _ => return None,
        };
        Some(EntityDefinition {
            name: name.into(),
            attributes: attrs.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect(),
        })
    }

    fn plugin_exists(&self, name: &str) -> bool {
        name == "probe"
    }

    fn workflow(&self, _name: &str) -> Option<(String, bool, Vec<String>)> {
        None
    }

    fn user_exists(&self, name: &str) -> bool {
        name == "ann"
    }
}

/// Reads every path as null, the time as a fixed instant.
struct Nothing;

impl crate::workflow::state::Resolve for Nothing {
    fn resolve(&self, path: &crate::workflow::state::Path) -> Result<Value, String> {
        Ok(match path {
            crate::workflow::state::Path::Now => Value::DateTime(1_790_000_000_000),
            _ => Value::Null,
        })
    }
}

#[test]
fn workflow_definitions() {
    use crate::workflow::state::{self, RunState};
    use crate::workflow::{Action, Definition};
    let example = include_bytes!("../../example-plugins/workflows/support-case.json");
    let seeds: &[&[u8]] = &[
        example,
        br#"{"name":"w","entity":"incident","triggers":{"update":["title"],"on_demand":true},"steps":[{"type":"wait","branches":[{"timeout":{"attribute":"due","offset":"-1h"},"steps":[{"type":"stop","status":"canceled","message":"{{record.title}}"}]}]}]}"#,
        br#"{"name":"w","entity":"incident","triggers":{"create":true},"steps":[{"id":"a","type":"activity","plugin":"probe","inputs":{"x":"{{record.due}}"}},{"type":"update","attributes":{"title":"{{steps.a.x}} {{now}}"}},{"type":"assign","owner":"ann"}]}"#,
    ];
    let mut walked = 0;
    run("workflow definition", cases(2000), |rng| {
        let bytes = variant(rng, seeds);
        let def = match Definition::parse(&bytes) {
            Ok(d) => d,
            Err(e) => return assert!(clear(&e)),
        };
        if let Err(e) = def.validate(&FuzzCatalog) {
            return assert!(clear(&e), "{}", String::from_utf8_lossy(&bytes));
        }
        // A valid definition walks to its end whatever its conditions say.
        walked += 1;
        let mut s = RunState::default();
        for _ in 0..1000 {
            let Some(step) = s.current(&def.steps) else { return };
            match &step.action {
                Action::Condition { branches } => {
                    let taken = branches
                        .iter()
                        .position(|b| b.when.as_ref().is_none_or(|f| state::holds(f, &Nothing).unwrap_or(false)));
                    match taken {
                        Some(b) => s.enter(&def.steps, b),
                        None => s.advance(&def.steps),
                    }
                }
                Action::Wait { branches } => {
                    for b in branches {
                        if let Some(t) = &b.timeout {
                            let _ = state::deadline(t, 0, &Nothing);
                        }
                    }
                    s.enter(&def.steps, rng.below(branches.len()));
                }
                Action::Create { attributes, .. } | Action::Update { attributes, .. } => {
                    for v in attributes.values() {
                        let _ = state::fill(v, &Nothing);
                    }
                    s.advance(&def.steps);
                }
                _ => s.advance(&def.steps),
            }
        }
        panic!("a valid definition did not reach its end in 1000 steps");
    });
    eprintln!("fuzz workflow definition: {walked} mutated definitions were valid and walked to their end");
    assert!(walked > 0, "no mutated definition stayed valid: the walk was never exercised");
    // Generated step trees: random types, nesting, paths and operators.
    let mut valid = 0;
    run("workflow step tree", cases(1000), |rng| {
        let doc = serde_json::json!({"name": "g", "entity": "incident", "triggers": {"create": true}, "steps": steps(rng, 0)});
        let bytes = doc.to_string().into_bytes();
        match Definition::parse(&bytes).and_then(|d| d.validate(&FuzzCatalog).map(|()| d)) {
            Ok(d) => {
                valid += 1;
                let mut s = RunState::default();
                let mut n = 0;
                while let Some(step) = s.current(&d.steps) {
                    n += 1;
                    assert!(n < 10_000, "{doc}");
                    match &step.action {
                        Action::Condition { .. } | Action::Wait { .. } if rng.below(2) == 0 => {
                            s.enter(&d.steps, rng.below(step.action.branch_count()));
                        }
                        _ => s.advance(&d.steps),
                    }
                }
            }
            Err(e) => assert!(clear(&e), "{doc}"),
        }
    });
    eprintln!("fuzz workflow step tree: {valid} generated definitions were valid");
    assert!(valid > 0);
}

/// A random list of steps, nesting at most three levels.
fn steps(rng: &mut Rng, depth: usize) -> serde_json::Value {
    use serde_json::json;
    let paths = ["title", "priority", "statecode", "due", "steps.a.id", "record.title", "nothing", "now", "steps.zz.x"];
    let ops = ["equal", "not_equal", "greater", "like", "in", "null", "not_null", "between"];
    let mut out = Vec::new();
    for i in 0..rng.below(4) + 1 {
        let cond = |rng: &mut Rng| {
            let op = *rng.pick(&ops);
            let values = match op {
                "null" | "not_null" => json!([]),
                "in" => json!(["a", "b"]),
                _ => json!([*rng.pick(&["x", "1"])]),
            };
            json!({"conditions": [{"attribute": *rng.pick(&paths), "operator": op, "values": values}]})
        };
        let step = match rng.below(if depth < 3 { 8 } else { 6 }) {
            0 => {
                json!({"type": "create", "entity": *rng.pick(&["task", "email", "nope"]), "attributes": {"subject": format!("{{{{{}}}}}", rng.pick(&paths))}})
            }
            1 => {
                json!({"type": "update", "attributes": {*rng.pick(&["title", "statecode", "due"]): *rng.pick(&["x", "{{now}}", "{{steps.a.id}}"])}})
            }
            2 => json!({"type": "stop", "status": *rng.pick(&["succeeded", "canceled"])}),
            3 => {
                json!({"type": "activity", "id": if i == 0 { "a" } else { "b" }, "plugin": *rng.pick(&["probe", "nope"]), "inputs": {"x": "{{record.title}}"}})
            }
            4 => json!({"type": "assign", "owner": *rng.pick(&["ann", "bob", "{{record.ownerid}}"])}),
            5 => json!({"type": "set_status", "statecode": 1, "statuscode": 2}),
            6 => {
                json!({"type": "condition", "branches": [{"when": cond(rng), "steps": steps(rng, depth + 1)}, {"steps": steps(rng, depth + 1)}]})
            }
            _ => json!({"type": "wait", "branches": [
                {"until": cond(rng), "steps": steps(rng, depth + 1)},
                {"timeout": *rng.pick(&[json!({"after": "1h"}), json!({"attribute": "due", "offset": "-1d"}), json!({"at": "nope"})]), "steps": []}]}),
        };
        out.push(step);
    }
    serde_json::Value::Array(out)
}
