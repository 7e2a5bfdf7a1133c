//! The lease store: SQLite in WAL mode with `synchronous = FULL`, one writer thread doing group
//! commit. Every write waits for its transaction; a reply is released only afterwards.
//!
//! The schema is meant to be read by operators with the `sqlite3` tool:
//! `sqlite3 leases.db "select address_text, state, hwaddr, datetime(ends, 'unixepoch') from leases"`.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};

use crate::lease::{ClientKey, FailoverTimes, HwAddr, Lease, LeaseState, hex};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    address      INTEGER PRIMARY KEY,   -- IPv4 address as an integer
    address_text TEXT NOT NULL,         -- the same, dotted
    subnet       TEXT NOT NULL,         -- the subnet it belongs to (CIDR)
    state        TEXT NOT NULL,         -- active | released | expired | declined | free | backup
    hwaddr       TEXT,                  -- hardware address, colon-separated hex
    htype        INTEGER,               -- hardware type (1 = Ethernet)
    client_id    TEXT,                  -- option 61, colon-separated hex
    hostname     TEXT,
    starts       INTEGER NOT NULL,      -- unix seconds
    ends         INTEGER NOT NULL,      -- end of the lease the client holds
    held_until   INTEGER NOT NULL,      -- not given to another client before this
    lease_time   INTEGER NOT NULL,      -- seconds granted per renewal
    fo_tstp      INTEGER NOT NULL DEFAULT 0,  -- failover: time sent to partner
    fo_tsfp      INTEGER NOT NULL DEFAULT 0,  -- failover: time acknowledged by partner
    fo_cltt      INTEGER NOT NULL DEFAULT 0,  -- failover: client last transaction time
    fo_pending   INTEGER NOT NULL DEFAULT 0   -- failover: update not yet acknowledged
);
CREATE INDEX IF NOT EXISTS leases_by_hwaddr ON leases(hwaddr);
CREATE INDEX IF NOT EXISTS leases_by_client_id ON leases(client_id);
";

/// A write that becomes durable as part of some transaction.
#[derive(Clone, Debug)]
pub enum Write {
    /// Insert or replace the row of `lease.address`.
    Lease(Lease, String),
    /// A key in the meta table (failover state, …).
    Meta(String, String),
}

/// A group of writes and who to tell when they are durable.
pub struct Batch {
    pub id: u64,
    pub writes: Vec<Write>,
}

/// What the writer reports back for each batch.
#[derive(Debug)]
pub struct Committed {
    pub ids: Vec<u64>,
    pub result: Result<(), String>,
    /// Batches merged into this transaction, and how long the commit took.
    pub transaction_batches: usize,
    pub micros: u64,
}

/// Handle to the writer thread.
pub struct Store {
    tx: mpsc::Sender<Batch>,
    path: PathBuf,
}

fn open(path: &Path) -> Result<Connection> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let conn = Connection::open(path)
        .with_context(|| format!("opening lease store {}", path.display()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit has reached the disk before it returns (WAL + NORMAL would lose the
    // last commits on power failure).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA).context("creating the schema")?;
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match version {
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION.to_string()],
            )?;
        }
        Some(v) if v == SCHEMA_VERSION.to_string() => {}
        Some(v) => bail!(
            "{} has schema version {v}; this xdpdhcp understands {SCHEMA_VERSION}",
            path.display()
        ),
    }
    Ok(conn)
}

/// Everything in the store, for start-up.
pub struct Loaded {
    pub leases: Vec<Lease>,
    pub meta: Vec<(String, String)>,
    /// Rows that could not be read (logged and skipped, never silently dropped).
    pub bad_rows: Vec<String>,
}

pub fn load(path: &Path) -> Result<Loaded> {
    let mut leases = vec![];
    let (meta, bad_rows) = load_streaming(path, 4096, |chunk| leases.extend(chunk))?;
    Ok(Loaded {
        leases,
        meta,
        bad_rows,
    })
}

/// How many lease rows the store holds (a capacity hint for start-up).
pub fn count(path: &Path) -> Result<usize> {
    let conn = open(path)?;
    let n: i64 = conn.query_row("SELECT count(*) FROM leases", [], |r| r.get(0))?;
    Ok(n.max(0) as usize)
}

/// Meta rows and rows that could not be read, from `load_streaming`.
pub type LoadRest = (Vec<(String, String)>, Vec<String>);

/// Reads every lease, handing them to `sink` in chunks of `chunk` (so that start-up can
/// install leases on one core while SQLite decodes on another).
pub fn load_streaming(
    path: &Path,
    chunk: usize,
    mut sink: impl FnMut(Vec<Lease>),
) -> Result<LoadRest> {
    let conn = open(path)?;
    let mut stmt = conn.prepare(
        "SELECT address, state, hwaddr, htype, client_id, hostname, starts, ends, held_until, lease_time,
                fo_tstp, fo_tsfp, fo_cltt, fo_pending FROM leases",
    )?;
    let mut leases = Vec::with_capacity(chunk);
    let mut bad_rows = vec![];
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<String>>(5)?,
            [
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, i64>(9)?,
            ],
            [
                r.get::<_, i64>(10)?,
                r.get::<_, i64>(11)?,
                r.get::<_, i64>(12)?,
                r.get::<_, i64>(13)?,
            ],
        ))
    })?;
    for row in rows {
        let (address, state, hwaddr, htype, client_id, hostname, times, fo) = row?;
        let decoded = (|| -> Result<Lease, String> {
            let address = Ipv4Addr::from(
                u32::try_from(address).map_err(|_| format!("address {address} out of range"))?,
            );
            let state = LeaseState::parse(&state)
                .ok_or_else(|| format!("{address}: unknown state {state}"))?;
            let hw = hwaddr
                .map(|h| {
                    crate::config::options::parse_hex(&h)
                        .map(|b| HwAddr::new(htype.unwrap_or(1) as u8, &b))
                })
                .transpose()
                .map_err(|e| format!("{address}: hwaddr {e}"))?;
            let id = client_id
                .map(|c| crate::config::options::parse_hex(&c))
                .transpose()
                .map_err(|e| format!("{address}: client_id {e}"))?;
            let client = match (&id, &hw) {
                (Some(id), _) => Some(ClientKey::Id(id.clone().into_boxed_slice())),
                (None, Some(hw)) => Some(ClientKey::Hw {
                    htype: hw.htype,
                    addr: hw.as_slice().into(),
                }),
                (None, None) => None,
            };
            let t = |v: i64| v.max(0) as u64;
            Ok(Lease {
                address,
                subnet: 0,
                state,
                client,
                hw,
                hostname,
                starts: t(times[0]),
                ends: t(times[1]),
                held_until: t(times[2]),
                lease_time: times[3].clamp(0, u32::MAX as i64) as u32,
                failover: FailoverTimes {
                    tstp: t(fo[0]),
                    tsfp: t(fo[1]),
                    cltt: t(fo[2]),
                    pending: fo[3] != 0,
                },
            })
        })();
        match decoded {
            Ok(lease) => leases.push(lease),
            Err(e) => bad_rows.push(e),
        }
        if leases.len() >= chunk {
            sink(std::mem::replace(&mut leases, Vec::with_capacity(chunk)));
        }
    }
    if !leases.is_empty() {
        sink(leases);
    }
    drop(stmt);
    let mut stmt = conn.prepare("SELECT key, value FROM meta")?;
    let meta = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((meta, bad_rows))
}

impl Store {
    /// Opens (creating if needed) the store and starts the writer thread. Results of each
    /// transaction are delivered through `done`.
    pub fn start(path: &Path, done: impl Fn(Committed) + Send + 'static) -> Result<Store> {
        let mut conn = open(path)?;
        let (tx, rx) = mpsc::channel::<Batch>();
        thread::Builder::new()
            .name("lease-store".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Group commit: everything queued while the previous commit ran.
                    let mut batches = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batches.push(more);
                    }
                    let started = Instant::now();
                    let result = write_all(&mut conn, &batches).map_err(|e| format!("{e:#}"));
                    done(Committed {
                        ids: batches.iter().map(|b| b.id).collect(),
                        result,
                        transaction_batches: batches.len(),
                        micros: started.elapsed().as_micros() as u64,
                    });
                }
            })
            .context("starting the lease store thread")?;
        Ok(Store {
            tx,
            path: path.to_path_buf(),
        })
    }

    pub fn submit(&self, batch: Batch) -> Result<()> {
        self.tx
            .send(batch)
            .map_err(|_| anyhow::anyhow!("the lease store thread has stopped"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_all(conn: &mut Connection, batches: &[Batch]) -> Result<()> {
    let tx = conn.transaction()?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO leases (address, address_text, subnet, state, hwaddr, htype, client_id, hostname,
                                 starts, ends, held_until, lease_time, fo_tstp, fo_tsfp, fo_cltt, fo_pending)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
             ON CONFLICT(address) DO UPDATE SET
                subnet = excluded.subnet, state = excluded.state, hwaddr = excluded.hwaddr,
                htype = excluded.htype, client_id = excluded.client_id, hostname = excluded.hostname,
                starts = excluded.starts, ends = excluded.ends, held_until = excluded.held_until,
                lease_time = excluded.lease_time, fo_tstp = excluded.fo_tstp, fo_tsfp = excluded.fo_tsfp,
                fo_cltt = excluded.fo_cltt, fo_pending = excluded.fo_pending",
        )?;
        let mut meta = tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )?;
        for write in batches.iter().flat_map(|b| &b.writes) {
            match write {
                Write::Lease(l, subnet) => {
                    let n = |v: u64| v.min(i64::MAX as u64) as i64;
                    upsert.execute(params![
                        u32::from(l.address),
                        l.address.to_string(),
                        subnet,
                        l.state.as_str(),
                        l.hw.map(|h| h.to_string()),
                        l.hw.map(|h| h.htype),
                        l.client.as_ref().and_then(|c| c.client_id()).map(hex),
                        l.hostname,
                        n(l.starts),
                        n(l.ends),
                        n(l.held_until),
                        l.lease_time,
                        n(l.failover.tstp),
                        n(l.failover.tsfp),
                        n(l.failover.cltt),
                        l.failover.pending,
                    ])?;
                }
                Write::Meta(k, v) => {
                    meta.execute(params![k, v])?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn lease(i: u8) -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 0, i),
            subnet: 0,
            state: LeaseState::Active,
            client: Some(ClientKey::Id(vec![1, i].into())),
            hw: Some(HwAddr::new(1, &[2, 0, 0, 0, 0, i])),
            hostname: Some(format!("host{i}")),
            starts: 100,
            ends: 200,
            held_until: 300,
            lease_time: 100,
            failover: FailoverTimes::default(),
        }
    }

    #[test]
    fn writes_are_durable_and_load_back() {
        let dir = std::env::temp_dir().join(format!("xdpdhcp-store-test-{}", std::process::id()));
        let path = dir.join("leases.db");
        let _ = std::fs::remove_dir_all(&dir);
        let results = Arc::new(Mutex::new(vec![]));
        let sink = results.clone();
        let store = Store::start(&path, move |c| sink.lock().unwrap().push(c)).unwrap();
        for i in 1..=50u8 {
            store
                .submit(Batch {
                    id: u64::from(i),
                    writes: vec![Write::Lease(lease(i), "10.0.0.0/24".into())],
                })
                .unwrap();
        }
        store
            .submit(Batch {
                id: 99,
                writes: vec![Write::Meta("failover_state".into(), "normal".into())],
            })
            .unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while results
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.ids.len())
            .sum::<usize>()
            < 51
        {
            assert!(Instant::now() < deadline, "commits did not complete");
            thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(results.lock().unwrap().iter().all(|c| c.result.is_ok()));
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.leases.len(), 50);
        assert!(loaded.bad_rows.is_empty());
        let mut l7 = loaded
            .leases
            .iter()
            .find(|l| l.address == Ipv4Addr::new(10, 0, 0, 7))
            .unwrap()
            .clone();
        l7.subnet = 0;
        assert_eq!(l7, lease(7));
        assert!(
            loaded
                .meta
                .contains(&("failover_state".into(), "normal".into()))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
