//! A remote worker's reads: through the server, for the job being run (its lease and
//! fencing token), with repeatable reads within one run; the registry and assemblies
//! by hash, verified before they are compiled; the compile cache's digests in files.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use super::client::{Client, Patience, RemoteError};
use crate::jobs::SystemJob;
use crate::metadata::EntityDefinition;
use crate::model::{AssemblyHash, Entity};
use crate::pipeline::{Registered, Source, View};
use crate::protocol::{MAX_SCAN, Read, ReadAnswer, ReadRequest, Registry};

use crate::runtime::ArtifactIndex;
use crate::store::{StoreError, StoredRecord};

/// How long a read keeps retrying while the server is unreachable.
const READ_PATIENCE: Duration = Duration::from_secs(10);
/// Records one scan call asks for.
const SCAN_PAGE: usize = 250;

/// A failed call as the pipeline sees it: a server that stayed unreachable (or whose
/// store did) is unavailable, so the job runs again later rather than failing.
pub(super) fn store_error(e: RemoteError) -> StoreError {
    let message = format!("{} ({})", e.message, e.code);
    if e.transient() { StoreError::Unavailable(message) } else { StoreError::Db(message) }
}

pub struct RemoteSource {
    client: Arc<Client>,
    /// The registry generation last loaded.
    pub(super) generation: AtomicU64,
}

impl RemoteSource {
    pub fn new(client: Arc<Client>) -> RemoteSource {
        RemoteSource { client, generation: AtomicU64::new(u64::MAX) }
    }
}

impl Source for RemoteSource {
    fn view(&self, job: Option<&SystemJob>) -> Result<Box<dyn View>, StoreError> {
        let job = job.ok_or_else(|| StoreError::Invalid("a remote worker reads only for a job it holds".into()))?;
        Ok(Box::new(RemoteView {
            client: self.client.clone(),
            job: job.id,
            token: job.fencing_token,
            records: Mutex::default(),
            definitions: Mutex::default(),
        }))
    }

    fn assembly_bytes(&self, hash: &AssemblyHash) -> anyhow::Result<Vec<u8>> {
        let path = format!("/worker/assemblies/{hash}");
        let bytes = self.client.get_raw(&path, Patience::For(READ_PATIENCE)).map_err(store_error)?;
        let got = AssemblyHash::of(&bytes);
        anyhow::ensure!(
            got == *hash,
            "the assembly downloaded for {hash} hashes to {got}: refused (tampered with or corrupted on the way)"
        );
        Ok(bytes)
    }

    fn registry(&self) -> Result<Registered, StoreError> {
        let r: Registry = self
            .client
            .call::<(), _>("GET", "/worker/registry", Patience::For(READ_PATIENCE), |_| None)
            .map_err(store_error)?;
        self.generation.store(r.generation, Ordering::SeqCst);
        let workflows = r
            .workflows
            .into_iter()
            .map(|w| w.into_active().map_err(StoreError::Invalid))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Registered { plugins: r.plugins, steps: r.steps, workflows, profiles: r.profiles })
    }

    fn bulk_rows(&self, job: &SystemJob, from: u64, max: usize) -> Result<Vec<(u64, Entity)>, StoreError> {
        let mut rows = Vec::new();
        while rows.len() < max {
            let want = (max - rows.len()).min(MAX_SCAN);
            let next = from + rows.len() as u64;
            let read = Read::Rows { from: next, max: want };
            match read_for(&self.client, job.id, job.fencing_token, read)? {
                ReadAnswer::Rows(r) => {
                    let done = r.len() < want;
                    rows.extend(r);
                    if done {
                        break;
                    }
                }
                _ => return Err(StoreError::Db("the server answered a rows read with something else".into())),
            }
        }
        Ok(rows)
    }
}

fn read_for(client: &Client, job: Uuid, token: u64, read: Read) -> Result<ReadAnswer, StoreError> {
    client
        .call("POST", "/worker/read", Patience::For(READ_PATIENCE), |_| {
            Some(ReadRequest { job, token, read: read.clone() })
        })
        .map_err(store_error)
}

/// One run's reads. A record read once reads the same for the rest of the run, so
/// the version its write is checked against is the one the plug-in saw.
struct RemoteView {
    client: Arc<Client>,
    job: Uuid,
    token: u64,
    records: Mutex<HashMap<(String, Uuid), Option<StoredRecord>>>,
    definitions: Mutex<HashMap<String, Option<EntityDefinition>>>,
}

impl RemoteView {
    fn read(&self, read: Read) -> Result<ReadAnswer, StoreError> {
        read_for(&self.client, self.job, self.token, read)
    }

    /// The first state this run saw of a record.
    fn remember(&self, entity: &str, id: Uuid, state: Option<StoredRecord>) -> Option<StoredRecord> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.entry((entity.to_owned(), id)).or_insert(state).clone()
    }
}

impl View for RemoteView {
    fn record(&self, entity: &str, id: Uuid) -> Result<Option<StoredRecord>, StoreError> {
        if let Some(seen) = self.records.lock().unwrap_or_else(|p| p.into_inner()).get(&(entity.to_owned(), id)) {
            return Ok(seen.clone());
        }
        match self.read(Read::Record { entity: entity.to_owned(), id })? {
            ReadAnswer::Record(r) => Ok(self.remember(entity, id, r)),
            _ => Err(StoreError::Db("the server answered a record read with something else".into())),
        }
    }

    fn scan(
        &self,
        entity: &str,
        after: Option<Uuid>,
        f: &mut dyn FnMut(Uuid, StoredRecord) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let mut after = after;
        loop {
            let page = match self.read(Read::Scan { entity: entity.to_owned(), after, max: SCAN_PAGE })? {
                ReadAnswer::Records(r) => r,
                _ => return Err(StoreError::Db("the server answered a scan with something else".into())),
            };
            let last = page.len() < SCAN_PAGE;
            for (id, record) in page {
                after = Some(id);
                // A record this run read before (and that still exists) reads as it did.
                if let Some(seen) = self.remember(entity, id, Some(record))
                    && f(id, seen).is_break()
                {
                    return Ok(());
                }
            }
            if last {
                return Ok(());
            }
        }
    }

    fn definition(&self, entity: &str) -> Result<Option<EntityDefinition>, StoreError> {
        if let Some(d) = self.definitions.lock().unwrap_or_else(|p| p.into_inner()).get(entity) {
            return Ok(d.clone());
        }
        let def = match self.read(Read::Definition { entity: entity.to_owned() })? {
            ReadAnswer::Definition(d) => d,
            _ => return Err(StoreError::Db("the server answered a definition read with something else".into())),
        };
        self.definitions.lock().unwrap_or_else(|p| p.into_inner()).insert(entity.to_owned(), def.clone());
        Ok(def)
    }

    fn principal(&self, user: Uuid) -> Result<Option<crate::security::Principal>, StoreError> {
        match self.read(Read::Principal { user })? {
            ReadAnswer::Principal(p) => Ok(p),
            _ => Err(StoreError::Db("the server answered a principal read with something else".into())),
        }
    }
}

/// The compile cache's digests as files beside the cache (a worker has no store): a
/// compiled artifact is loaded only if its digest matches the one written with it.
pub struct FileArtifacts {
    dir: PathBuf,
}

impl FileArtifacts {
    pub fn new(dir: PathBuf) -> std::io::Result<FileArtifacts> {
        std::fs::create_dir_all(&dir)?;
        Ok(FileArtifacts { dir })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key.replace(['/', '\\', '.'], "_"))
    }
}

impl ArtifactIndex for FileArtifacts {
    fn artifact_digest(&self, key: &str) -> anyhow::Result<Option<[u8; 32]>> {
        match std::fs::read(self.path(key)) {
            Ok(bytes) => Ok(<[u8; 32]>::try_from(bytes.as_slice()).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn record_artifact(&self, key: &str, digest: [u8; 32]) -> anyhow::Result<()> {
        let path = self.path(key);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, digest)?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;
    use crate::protocol::{Hello, PROTOCOL_VERSION};

    /// How the fake server answers one connection.
    enum Answer {
        /// Closes it without a word (a server killed mid-request).
        Hangs,
        Status(u16, Vec<u8>),
    }

    /// A server that answers its connections as `answers` say, in order.
    fn fake_server(answers: Vec<Answer>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for (conn, answer) in listener.incoming().flatten().zip(answers) {
                let mut conn = conn;
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let Answer::Status(status, body) = answer else { continue };
                let head =
                    format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
            }
        });
        url
    }

    fn source(url: &str) -> RemoteSource {
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            name: "t".into(),
            host: "h".into(),
            pid: 1,
            version: "0".into(),
            workers: 1,
        };
        RemoteSource::new(Arc::new(Client::new(url, "token", hello, ureq::tls::TlsConfig::default())))
    }

    #[test]
    fn a_tampered_assembly_download_is_refused() {
        let url = fake_server(vec![Answer::Status(200, b"these are not the bytes you registered".to_vec())]);
        let expected = AssemblyHash::of(b"the registered bytes");
        let err = source(&url).assembly_bytes(&expected).unwrap_err().to_string();
        assert!(err.contains(&format!("the assembly downloaded for {expected} hashes to")), "{err}");
        assert!(err.contains("refused (tampered with or corrupted on the way)"), "{err}");
    }

    #[test]
    fn an_assembly_download_rides_out_a_restarting_server() {
        let bytes = b"the registered bytes".to_vec();
        let unavailable = br#"{"error":{"code":"store_unavailable","message":"the database is restarting"}}"#;
        let url = fake_server(vec![
            Answer::Hangs,
            Answer::Status(503, unavailable.to_vec()),
            Answer::Status(200, bytes.clone()),
        ]);
        assert_eq!(source(&url).assembly_bytes(&AssemblyHash::of(&bytes)).unwrap(), bytes);
    }

    #[test]
    fn a_server_out_of_reach_makes_the_store_unavailable_and_a_refusal_does_not() {
        let away = RemoteError { code: "unreachable".into(), message: "cannot reach the server".into() };
        assert!(matches!(store_error(away), StoreError::Unavailable(m) if m.contains("cannot reach the server")));
        let lost = RemoteError { code: "lease_lost".into(), message: "reads end with the lease".into() };
        assert!(matches!(store_error(lost), StoreError::Db(_)));
        let url = fake_server(vec![Answer::Status(
            404,
            br#"{"error":{"code":"not_found","message":"no such assembly"}}"#.to_vec(),
        )]);
        let err = source(&url).assembly_bytes(&AssemblyHash::of(b"x")).unwrap_err();
        assert!(
            matches!(err.downcast_ref::<StoreError>(), Some(StoreError::Db(m)) if m.contains("no such assembly")),
            "{err:#}"
        );
    }

    #[test]
    fn compile_cache_digests_survive_in_files() {
        let dir = tempfile::tempdir().unwrap();
        let index = FileArtifacts::new(dir.path().join("index")).unwrap();
        assert_eq!(index.artifact_digest("engine/abc").unwrap(), None);
        index.record_artifact("engine/abc", [7; 32]).unwrap();
        let again = FileArtifacts::new(dir.path().join("index")).unwrap();
        assert_eq!(again.artifact_digest("engine/abc").unwrap(), Some([7; 32]), "a restart finds what it compiled");
    }
}
