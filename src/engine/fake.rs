//! An engine for unit tests of pure logic: it answers what the test set and refuses the rest.
//! Everything that talks to Docker is tested against the real engine (tests/e2e_*).

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{Engine, EngineError, EngineEvent, EngineInfo, ErrorKind, Inspected, Observed, Result};
use crate::desired::ContainerSpec;

/// A marker container as `read_marker` returns it: id, labels, expiry.
pub type Marker = (String, BTreeMap<String, String>, i64);

#[derive(Default)]
pub struct Fake {
    /// What `list` shows. `inspect` never finds any of it (removed since the list).
    pub listed: Vec<Observed>,
    /// The marker container, if one exists: `create_marker` finds its name taken, `remove`
    /// of its id removes it.
    pub marker: std::sync::Mutex<Option<Marker>>,
    /// The engine's clock, for `now`.
    pub clock: i64,
    /// What `any_image` answers.
    pub image: Option<String>,
    /// What `networks` answers (names; the id is the name reversed); None: refused.
    pub networks: Option<Vec<String>>,
    /// How many times `networks` was asked.
    pub network_reads: std::sync::atomic::AtomicU64,
    /// The images `image_labels` finds (by reference); None: refused.
    pub images: Option<Vec<String>>,
    /// When set, `stop` and `start` succeed and are recorded here ("stop ID", "start ID").
    pub calls: Option<std::sync::Mutex<Vec<String>>>,
    /// The daemon ID `info` answers; None: refused.
    pub daemon_id: Option<String>,
    /// A container whose `start` fails as Docker's does for a container whose runtime task
    /// outlived an unclean engine restart ("task ID: already exists").
    pub stuck: Option<String>,
    /// With `calls`: `create` succeeds (ids `new-1`, ...) and is recorded as "create NAME
    /// replaces=ID" (or "-"), `remove` of any container as "remove ID", `rename` as "rename
    /// ID NAME", `pull` as "pull IMAGE".
    pub writable: bool,
    /// The labels `inspect` shows, by container id (other fields empty); others not found.
    pub inspected_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// How many times `inspect` was asked.
    pub inspects: std::sync::atomic::AtomicU64,
    /// What every `inspect` fails with, when set (an engine that timed out, say).
    pub inspect_fails: Option<ErrorKind>,
    /// `renew_marker` never answers (an engine that stopped answering).
    pub renewals_hang: bool,
    /// The marker's name is taken by no container (Docker after a crash can answer so):
    /// `create_marker` finds it taken, `read_marker` finds nothing; counted here.
    pub phantom_marker: Option<std::sync::atomic::AtomicU64>,
    /// Recorded calls that fail, once each, with this kind of error (after being recorded:
    /// the engine may have done it, the answer was lost).
    pub fails: std::sync::Mutex<Vec<(String, ErrorKind)>>,
    /// The marker with this id is removed by another run just before this one's `remove`
    /// of it, which then finds it gone (as Docker answers: not an error).
    pub removed_by_another: Option<String>,
}

/// A listed container.
pub fn observed(id: &str, name: &str, state: super::State, labels: &[(&str, &str)]) -> Observed {
    Observed {
        id: id.into(),
        name: name.into(),
        image: "img".into(),
        state,
        health: None,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        networks: vec!["bridge".into()],
        network_mode: None,
        network_ids: Vec::new(),
        created: 0,
        host_ports: Vec::new(),
    }
}

/// A running container `0ld` of `spec`'s outpost in project `p`, labelled as
/// `integration`'s, made from the config of `hash`.
pub fn outposts_container(spec: &ContainerSpec, integration: &str, hash: &str) -> Observed {
    use crate::desired::{
        LABEL_CONFIG_HASH, LABEL_INTEGRATION, LABEL_MANAGED_BY, LABEL_PROJECT, LABEL_UUID,
    };
    observed(
        "0ld",
        &spec.name,
        super::State::Running,
        &[
            (LABEL_UUID, spec.uuid.as_str()),
            (LABEL_PROJECT, "p"),
            (LABEL_MANAGED_BY, "outpostctl"),
            (LABEL_INTEGRATION, integration),
            (LABEL_CONFIG_HASH, hash),
        ],
    )
}

/// A valid manifest set of project `p`, from the YAML of `set.yaml` beside a `token` file.
pub fn validated(set_yaml: &str) -> crate::validate::Validated {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("token"), "t0ken\n").expect("token");
    std::fs::write(dir.path().join("set.yaml"), set_yaml).expect("manifest");
    let outcome = crate::validate::validate(&[dir.path().to_path_buf()]);
    match outcome.validated {
        Some(v) => v,
        None => panic!("invalid: {:?}", outcome.diagnostics),
    }
}

/// The id `create_marker` gives the marker it creates.
pub const CREATED_MARKER: &str = "c4eated";

impl Fake {
    /// The calls recorded (see `calls`).
    pub fn recorded(&self) -> Vec<String> {
        self.calls
            .as_ref()
            .map(|c| {
                c.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            })
            .unwrap_or_default()
    }

    fn record(&self, call: String) -> Result<()> {
        let Some(c) = &self.calls else {
            return refused();
        };
        c.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(call.clone());
        let mut fails = self
            .fails
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match fails.iter().position(|(f, _)| *f == call) {
            Some(i) => {
                let (_, kind) = fails.remove(i);
                Err(EngineError::new(
                    kind,
                    format!("{call}: failed in this test"),
                ))
            }
            None => Ok(()),
        }
    }

    /// Makes `call` fail once with an error of `kind`.
    pub fn fail_once(&self, call: &str, kind: ErrorKind) {
        self.fails
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((call.to_string(), kind));
    }

    pub fn marker(&self) -> std::sync::MutexGuard<'_, Option<Marker>> {
        self.marker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn refused<T>() -> Result<T> {
    Err(EngineError::new(ErrorKind::Api, "not in this test"))
}

#[async_trait]
impl Engine for Fake {
    async fn info(&self) -> Result<EngineInfo> {
        match &self.daemon_id {
            Some(id) => Ok(EngineInfo {
                id: id.clone(),
                server_version: "20.10.24".into(),
                api_version: "1.41".into(),
                os: "fake".into(),
                swarm_worker: false,
            }),
            None => refused(),
        }
    }
    async fn list(&self) -> Result<Vec<Observed>> {
        Ok(self.listed.clone())
    }
    async fn inspect(&self, id: &str) -> Result<Inspected> {
        self.inspects
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(kind) = self.inspect_fails {
            return Err(EngineError::new(
                kind,
                format!("inspect {id}: failed in this test"),
            ));
        }
        match self.inspected_labels.get(id) {
            Some(labels) => Ok(Inspected {
                id: format!("id-of-{id}"),
                name: id.to_string(),
                running: true,
                image: String::new(),
                env: BTreeMap::new(),
                labels: labels.clone(),
                ports: Vec::new(),
                network: None,
                restart_policy: String::new(),
                healthcheck: None,
                started_at: None,
            }),
            None => Err(EngineError::new(
                ErrorKind::NotFound,
                format!("no such container: {id}"),
            )),
        }
    }
    async fn networks(&self) -> Result<Vec<(String, String)>> {
        self.network_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.networks {
            Some(names) => Ok(names
                .iter()
                .map(|n| (n.chars().rev().collect(), n.clone()))
                .collect()),
            None => Err(EngineError::new(ErrorKind::Forbidden, "networks: 403")),
        }
    }
    async fn image_labels(&self, image: &str) -> Result<Option<BTreeMap<String, String>>> {
        match &self.images {
            Some(images) => Ok(images.iter().any(|i| i == image).then(BTreeMap::new)),
            None => refused(),
        }
    }
    async fn pull(
        &self,
        image: &str,
        report: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<()> {
        if !self.writable {
            return refused();
        }
        self.record(format!("pull {image}"))?;
        report("Downloaded newer image");
        Ok(())
    }
    async fn image_id(&self, image: &str) -> Result<Option<String>> {
        if self.calls.is_some() {
            self.record(format!("image_id {image}"))?;
        }
        Ok(self
            .image_labels(image)
            .await?
            .map(|_| format!("sha256:{:0>64}", image.len())))
    }
    async fn create(
        &self,
        spec: &ContainerSpec,
        _: &str,
        _: Option<&str>,
        extra: &BTreeMap<String, String>,
    ) -> Result<String> {
        if !self.writable {
            return refused();
        }
        let replaces = extra
            .get(crate::desired::LABEL_REPLACES)
            .map_or("-", String::as_str);
        self.record(format!("create {} replaces={replaces}", spec.name))?;
        let n = self
            .recorded()
            .iter()
            .filter(|c| c.starts_with("create "))
            .count();
        Ok(format!("new-{n}"))
    }
    async fn start(&self, id: &str) -> Result<()> {
        if self.stuck.as_deref() == Some(id) {
            return Err(EngineError::new(
                ErrorKind::Api,
                format!(
                    "start container: the engine at unix:///var/run/docker.sock answered 500: task {id}: already exists"
                ),
            ));
        }
        self.record(format!("start {id}"))
    }
    async fn stop(&self, id: &str) -> Result<()> {
        self.record(format!("stop {id}"))
    }
    async fn unpause(&self, _: &str) -> Result<()> {
        refused()
    }
    async fn restart(&self, _: &str) -> Result<()> {
        refused()
    }
    async fn rename(&self, id: &str, name: &str) -> Result<()> {
        if !self.writable {
            return refused();
        }
        self.record(format!("rename {id} {name}"))
    }
    async fn remove(&self, id: &str) -> Result<bool> {
        if self.writable {
            return self.record(format!("remove {id}")).map(|()| true);
        }
        if self.calls.is_some() {
            self.record(format!("remove {id}"))?;
        }
        // As Docker: a container that is gone already is not an error.
        let mut marker = self.marker();
        if self.removed_by_another.as_deref() == Some(id)
            && matches!(&*marker, Some((held, _, _)) if held == id)
        {
            *marker = None;
            return Ok(false);
        }
        match &*marker {
            Some((held, _, _)) if held == id => {
                *marker = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn now(&self) -> Result<i64> {
        Ok(self.clock)
    }
    async fn clock(&self) -> Result<Option<i64>> {
        Ok(self.clock.checked_mul(1_000_000_000))
    }
    async fn any_image(&self) -> Result<Option<String>> {
        Ok(self.image.clone())
    }
    async fn create_marker(
        &self,
        _: &str,
        _: &str,
        labels: &BTreeMap<String, String>,
        expires: i64,
    ) -> Result<Option<String>> {
        if let Some(tries) = &self.phantom_marker {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Ok(None);
        }
        let mut marker = self.marker();
        if marker.is_some() {
            return Ok(None);
        }
        *marker = Some((CREATED_MARKER.into(), labels.clone(), expires));
        Ok(Some(CREATED_MARKER.into()))
    }
    async fn read_marker(&self, _: &str) -> Result<Option<Marker>> {
        Ok(self.marker().clone())
    }
    async fn renew_marker(&self, id: &str, _: i64) -> Result<()> {
        if self.renewals_hang {
            std::future::pending::<()>().await;
        }
        if self.calls.is_some() {
            self.record(format!("renew {id}"))?;
        }
        Ok(())
    }
    fn events(
        &self,
        _: &str,
        _: Option<i64>,
    ) -> futures_util::stream::BoxStream<'static, Result<EngineEvent>> {
        Box::pin(futures_util::stream::empty())
    }
    fn requests(&self) -> u64 {
        0
    }
}
