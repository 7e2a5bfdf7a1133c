//! kill -9 while clients renew through the fast path: every ACK a client received is covered
//! by the store, and no address ever goes to two clients. Needs root.
//!
//! Before the kill, the daemon is frozen (SIGSTOP) while the XDP program keeps answering: the
//! renewals it grants meanwhile must stop at the horizon the daemon last made durable.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use dhcproto::v4::MessageType;
use xdpdhcp_tests::{
    netlab::*,
    relay_client::{Answer, RelayClient, mac},
};

const CLIENTS: u32 = 60;
/// Short leases stored with little headroom (20 %, 2 s): within the test, renewals outrun the
/// first stored horizon many times over, so they are only safe if the daemon keeps raising it
/// durably (and the fast path respects it).
const LEASE: u32 = 10;
const HEADROOM: &str = "fast-path-headroom = 20";

/// (address, lease held until) per address in a copy of the store.
fn stored(db: &Path) -> HashMap<Ipv4Addr, (String, u64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT address_text, hwaddr, held_until FROM leases")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })
    .unwrap()
    .map(|r| r.unwrap())
    .map(|(a, hw, held)| (a.parse().unwrap(), (hw.unwrap_or_default(), held as u64)))
    .collect()
}

/// A consistent copy of the store as it is on disk right now (database and WAL).
fn snapshot(db: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for suffix in ["", "-wal"] {
        let from = format!("{}{suffix}", db.display());
        if Path::new(&from).exists() {
            std::fs::copy(&from, to.join(format!("leases.db{suffix}"))).unwrap();
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Checks every ACK against a store snapshot: the address is stored for that client until at
/// least the end of the lease the ACK granted.
fn assert_covered(acks: &[Answer], store: &HashMap<Ipv4Addr, (String, u64)>) {
    for a in acks {
        let granted_until = unix(a.at) + u64::from(a.lease_time.expect("ACKs carry a lease time"));
        let (hw, held) = store
            .get(&a.yiaddr)
            .unwrap_or_else(|| panic!("ACK for {} not in the store", a.yiaddr));
        assert_eq!(
            hw,
            &mac_text(a.chaddr),
            "{} stored for another client",
            a.yiaddr
        );
        // One second of slack: the ACK was granted (and the store's time rounded up) before
        // the client noted the time it arrived.
        assert!(
            held + 1 >= granted_until,
            "{}: ACK until {granted_until}, stored until {held}",
            a.yiaddr
        );
    }
}

#[test]
fn e2e_kill9_during_fast_path_renewals_loses_nothing() {
    let mut lab = Lab::new(0).unwrap();
    let config = lab.config(LEASE, HEADROOM, "");
    let mut d = lab.start_daemon(&config).unwrap();
    let mut r = RelayClient::new(&lab.relay, PLAYED_RELAY_GIADDR).unwrap();
    let mut bound = vec![];
    for n in 0..CLIENTS {
        bound.push((r.dora(mac(n)).unwrap().yiaddr, mac(n)));
    }
    // Renew round robin from a thread, recording every ACK and when it arrived.
    let acks: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let renewer = {
        let (acks, stop, bound) = (acks.clone(), stop.clone(), bound.clone());
        thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (ip, m) = bound[i % bound.len()];
                let mut b = xdpdhcp_tests::frames::Bootp::renew(ip, m);
                b.xid = r.xid();
                let _ = r.send(&b);
                if let Some(a) = r.recv(b.xid, Duration::from_millis(100)) {
                    assert_eq!(a.msg_type, MessageType::Ack, "renewal of {ip} refused");
                    acks.lock().unwrap().push(a);
                }
                i += 1;
            }
            r
        })
    };
    assert!(
        wait_for(Duration::from_secs(10), || acks.lock().unwrap().len() > 300),
        "renewals are not being answered"
    );
    thread::sleep(Duration::from_secs(8));
    let fast_before = d.fast("ack_rebinding");
    assert!(fast_before > 100, "renewals go through XDP ({fast_before})");
    assert!(
        d.counter("horizon_raises") > 0,
        "the horizon was raised while clients renewed"
    );

    // Freeze the daemon: XDP keeps answering from the map, up to the durable horizon, then
    // punts to a daemon that cannot answer. Then crash it and see what the disk says.
    let frozen_at = acks.lock().unwrap().len();
    d.signal(libc::SIGSTOP);
    thread::sleep(Duration::from_secs(5));
    let answered_frozen = acks.lock().unwrap().len() - frozen_at;
    assert!(
        answered_frozen > 0,
        "XDP answers while the daemon is frozen"
    );
    d.kill9();
    let before_crash: Vec<Answer> = acks.lock().unwrap().clone();
    let crash = lab.dir.join("at-crash");
    snapshot(&d.db, &crash);
    assert_covered(&before_crash, &stored(&crash.join("leases.db")));

    // Restart: renewals are answered again (by XDP), and new clients get other addresses.
    d.restart().unwrap();
    let n_before = acks.lock().unwrap().len();
    assert!(
        wait_for(Duration::from_secs(15), || acks.lock().unwrap().len()
            > n_before + 100),
        "no renewals after restart"
    );
    stop.store(true, Ordering::Relaxed);
    let mut r = renewer.join().unwrap();
    assert!(
        d.fast("ack_rebinding") > 0,
        "the fast path is back after restart"
    );
    let now = unix(SystemTime::now());
    let held_by_old: HashSet<Ipv4Addr> = bound.iter().map(|(a, _)| *a).collect();
    for n in CLIENTS..CLIENTS + 30 {
        let a = r.dora(mac(n)).unwrap().yiaddr;
        assert!(
            !held_by_old.contains(&a),
            "{a} given to a new client while an old one holds it"
        );
    }

    // Every ACK of the whole run, against the final store; and each address had one client.
    d.stop().unwrap();
    let all = acks.lock().unwrap().clone();
    assert_covered(&all, &stored(&d.db));
    let mut owner: HashMap<Ipv4Addr, [u8; 6]> = HashMap::new();
    for a in &all {
        assert_eq!(
            *owner.entry(a.yiaddr).or_insert(a.chaddr),
            a.chaddr,
            "{} ACKed to two clients",
            a.yiaddr
        );
    }
    assert!(all.iter().all(|a| unix(a.at) <= now + 60));
}
