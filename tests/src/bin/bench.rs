//! `cargo xtask bench`: xdpdhcp against Kea, ISC dhcpd and dnsmasq, on the same namespaces, in
//! the same run. Workloads: renewals (XDP load generator), DORA for new clients (the generator
//! and perfdhcp), an INIT-REBOOT storm, and (xdpdhcp) 1 M leases. Rates are found by stepping
//! up the offered load; a server's rate is the highest one it answered with under 1 % loss.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::programs::xdp::XdpLinkId;
use clap::Parser;
use serde_json::{Value, json};
use xdpdhcp_tests::{
    loadgen::{Generator, Mode, Wiring},
    servers::{
        self, BenchNet, DIRECT_BASE, DIRECT_INDEX, Kind, Preload, RELAY_BASE, RELAY_IP, Running,
        SERVER_IP,
    },
};

#[derive(Parser)]
#[command(about = "Benchmark xdpdhcp against Kea, ISC dhcpd and dnsmasq")]
struct Args {
    /// Smaller client counts and shorter steps (about 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write BENCHMARKS.md and the chart (bench-chart.png) into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Fast-path microbenchmark results (JSON from fastpath-bench) to include.
    #[arg(long)]
    fastpath_json: Option<PathBuf>,
    /// Only these servers (default: all).
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Only these workloads: renew, dora, perfdhcp, reboot, failover, scale (default: all).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Only redraw the chart (bench-chart.png in --report, default .) from an earlier --json.
    #[arg(long, value_name = "JSON")]
    redraw_chart: Option<PathBuf>,
    /// The command line to print in the report.
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
}

/// One step of offered load: what was sent, what came back.
#[derive(Clone, Copy, Debug)]
struct Point {
    offered_pps: f64,
    achieved_pps: f64,
    loss: f64,
}

impl Point {
    /// A step that sent `sent` requests in `secs` and got `answered` replies: the rate is
    /// answers over the sending period; nothing sent counts as total loss.
    fn measured(offered_pps: f64, sent: u64, answered: u64, secs: f64) -> Point {
        let loss = if sent == 0 {
            1.0
        } else {
            (1.0 - answered as f64 / sent as f64).max(0.0)
        };
        Point {
            offered_pps,
            achieved_pps: answered as f64 / secs,
            loss,
        }
    }
}

#[derive(Default, Debug)]
struct Outcome {
    renew: Vec<Point>,
    dora_gen: Vec<Point>,
    dora_perfdhcp: Vec<Point>,
    /// Seconds until every client was re-bound, and retry rounds; None if it did not finish.
    reboot: Option<(f64, u32)>,
    reboot_bound: (u32, u32),
    /// Clients in the reboot storm (fewer than asked if the server could not load them all).
    reboot_clients: u32,
    notes: Vec<String>,
}

#[derive(Clone)]
struct Params {
    quick: bool,
    /// How long each step of offered load lasts (the generator's workloads).
    step: Duration,
    /// Replies have settled once none came for this long.
    quiet: Duration,
    /// At most this long for late replies after a step (a real client retransmits by then).
    settle_max: Duration,
    /// At most this long for an overloaded server to work off its backlog.
    drain: Duration,
    /// Offered load grows by this factor per step, then `refine` bisection steps follow.
    factor: f64,
    refine: u32,
    perfdhcp_secs: u32,
    renew_clients: u32,
    reboot_clients: u32,
    reboot_limit: Duration,
    scale_leases: u32,
    dora_pool: u32,
}

impl Params {
    fn new(quick: bool) -> Params {
        if quick {
            Params {
                quick,
                step: Duration::from_millis(400),
                quiet: Duration::from_millis(150),
                settle_max: Duration::from_secs(3),
                drain: Duration::from_secs(5),
                factor: 3.0,
                refine: 1,
                perfdhcp_secs: 1,
                renew_clients: 5_000,
                reboot_clients: 3_000,
                reboot_limit: Duration::from_secs(8),
                scale_leases: 1_000_000,
                dora_pool: 120_000,
            }
        } else {
            Params {
                quick,
                step: Duration::from_secs(2),
                quiet: Duration::from_millis(300),
                settle_max: Duration::from_secs(8),
                drain: Duration::from_secs(20),
                factor: 2.0,
                refine: 2,
                perfdhcp_secs: 3,
                renew_clients: 50_000,
                reboot_clients: 100_000,
                reboot_limit: Duration::from_secs(120),
                scale_leases: 1_000_000,
                dora_pool: 250_000,
            }
        }
    }
}

const MAX_LOSS: f64 = 0.01;
/// Offered load starts here and climbs geometrically.
const FIRST_RATE: f64 = 100.0;
/// The generator's ceiling on this machine is a few million frames per second.
const LAST_RATE: f64 = 8e6;

/// Seconds since the benchmark started (progress lines).
fn elapsed() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

fn main() -> Result<()> {
    elapsed();
    let args = Args::parse();
    if let Some(json) = &args.redraw_chart {
        return redraw_chart(json, args.report.as_deref().unwrap_or(Path::new(".")));
    }
    servers::check_installed()?;
    let params = Params::new(args.quick);
    let wants = |w: &str| args.workloads.is_empty() || args.workloads.iter().any(|x| x == w);
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| args.servers.is_empty() || args.servers.iter().any(|s| s == k.name()))
        .collect();

    let dir = std::env::temp_dir().join(format!("xdpdhcp-bench-{}", std::process::id()));
    let net = BenchNet::new(&dir)?;
    let _buffers = servers::RecvBuffers::raise()?;
    let wiring = Wiring {
        our_mac: net.gen_mac,
        server_mac: net.server_mac,
        relay_ip: RELAY_IP,
        server_ip: SERVER_IP,
    };
    let started = Instant::now();
    let mut results: BTreeMap<&'static str, Outcome> = BTreeMap::new();
    let mut failover = None;
    {
        // The generator lives in the generator namespace; so does this thread from now on.
        let _in_generator = net.generator.enter_here()?;
        let mut generator = Generator::new("vg", wiring)?;
        for kind in &kinds {
            eprintln!(
                "\n=== {} ({:.0} s)",
                kind.name(),
                started.elapsed().as_secs_f64()
            );
            let outcome = match bench_server(*kind, &net, &mut generator, &params, &wants) {
                Ok(outcome) => outcome,
                // A peer that cannot serve the full set of bound clients is still measured,
                // with the quick run's smaller set, and the report says so.
                Err(e) if *kind != Kind::Xdpdhcp && !params.quick => {
                    let smaller = Params {
                        renew_clients: Params::new(true).renew_clients,
                        reboot_clients: Params::new(true).reboot_clients,
                        ..params.clone()
                    };
                    let why = e.to_string();
                    let why = why.lines().next().unwrap_or_default().trim_end_matches(':');
                    eprintln!(
                        "{why}\n{} again with {} bound clients",
                        kind.name(),
                        smaller.renew_clients + smaller.reboot_clients
                    );
                    let mut outcome = bench_server(*kind, &net, &mut generator, &smaller, &wants)
                        .with_context(|| format!("benchmarking {}", kind.name()))?;
                    outcome.notes.push(format!(
                        "with {} bound clients in its lease file, {why} (it was still loading \
                         the file at 100 % CPU); measured with {} bound clients instead, so its \
                         reboot storm is not comparable",
                        params.renew_clients + params.reboot_clients,
                        smaller.renew_clients + smaller.reboot_clients
                    ));
                    outcome
                }
                Err(e) => return Err(e.context(format!("benchmarking {}", kind.name()))),
            };
            results.insert(kind.name(), outcome);
        }
        if wants("failover") && kinds.contains(&Kind::Xdpdhcp) {
            failover = Some(bench_failover(&net, &mut generator, &params)?);
        }
    }
    let scale = if wants("scale") && kinds.contains(&Kind::Xdpdhcp) {
        Some(bench_scale(&net, &params)?)
    } else {
        None
    };
    let fastpath: Option<Value> = args
        .fastpath_json
        .as_ref()
        .and_then(|p| fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok());

    let summary = summarize(
        &results,
        scale.as_ref(),
        failover.as_ref(),
        fastpath.as_ref(),
    );
    let table = markdown(
        &results,
        &summary,
        scale.as_ref(),
        failover.as_ref(),
        fastpath.as_ref(),
    );
    println!("\n{table}");
    if let Some(path) = &args.json {
        fs::write(path, serde_json::to_string_pretty(&summary)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &args.report {
        fs::create_dir_all(dir)?;
        let chart = dir.join("bench-chart.png");
        chart::draw(&chart, &results)?;
        let doc = report(&args, &table, started.elapsed());
        fs::write(dir.join("BENCHMARKS.md"), doc)?;
        eprintln!(
            "wrote {} and {}",
            dir.join("BENCHMARKS.md").display(),
            chart.display()
        );
    }
    if std::env::var_os("XDPDHCP_BENCH_DEBUG").is_none() {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// The chart again, from the curves an earlier run wrote with --json.
fn redraw_chart(json: &Path, dir: &Path) -> Result<()> {
    let text = fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let summary: Value = serde_json::from_str(&text)?;
    let points = |curve: &Value| -> Vec<Point> {
        curve
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| Point {
                        offered_pps: p["offered_pps"].as_f64().unwrap_or(0.0),
                        achieved_pps: p["answered_pps"].as_f64().unwrap_or(0.0),
                        loss: p["loss"].as_f64().unwrap_or(0.0),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut results = BTreeMap::new();
    for kind in Kind::ALL {
        let name = kind.name();
        if summary["renew_curve"].get(name).is_none() {
            continue;
        }
        let outcome = Outcome {
            renew: points(&summary["renew_curve"][name]),
            dora_gen: points(&summary["dora_curve"][name]),
            ..Outcome::default()
        };
        results.insert(name, outcome);
    }
    let chart = dir.join("bench-chart.png");
    chart::draw(&chart, &results)?;
    eprintln!("wrote {}", chart.display());
    Ok(())
}

fn bench_server(
    kind: Kind,
    net: &BenchNet,
    g: &mut Generator,
    p: &Params,
    wants: &dyn Fn(&str) -> bool,
) -> Result<Outcome> {
    let mut out = Outcome {
        reboot_clients: p.reboot_clients,
        ..Outcome::default()
    };
    let preload = Preload {
        relayed: p.renew_clients,
        direct: p.reboot_clients,
    };
    // Each workload gets a freshly started server: an overloaded server's backlog would
    // otherwise be measured as part of the next workload.
    let fresh = |g: &mut Generator| -> Result<(Running, Option<XdpLinkId>)> {
        let t = Instant::now();
        let server = servers::start(kind, net, preload, "native")?;
        eprintln!(
            "[{:.0} s] started with {} bound clients in {:.1} s",
            elapsed(),
            p.renew_clients + p.reboot_clients,
            t.elapsed().as_secs_f64()
        );
        // Frames a generator transmits with XDP reach the peer veth only if it runs XDP.
        let pass = if kind == Kind::Xdpdhcp {
            None
        } else {
            let _in_server = net.server.enter_here()?;
            Some(g.attach_pass("vs")?)
        };
        Ok((server, pass))
    };
    // The reboot storm first, on a server just started from its lease database (the power
    // came back); the renewals then run on the same server (other clients).
    if wants("reboot") || wants("renew") {
        let (server, pass) = fresh(g)?;
        if wants("reboot") {
            let (result, bound) = reboot_storm(g, p)?;
            out.reboot = result;
            out.reboot_bound = bound;
            match result {
                Some((s, rounds)) => eprintln!(
                    "reboot storm: {} clients re-bound in {s:.2} s ({rounds} rounds)",
                    p.reboot_clients
                ),
                None => {
                    eprintln!(
                        "reboot storm: {}/{} re-bound within {:?}",
                        bound.0, bound.1, p.reboot_limit
                    );
                    out.notes.push(format!(
                        "reboot storm: {} of {} re-bound within {} s",
                        bound.0,
                        bound.1,
                        p.reboot_limit.as_secs()
                    ));
                }
            }
            server.wait_idle_for(p.drain);
        }
        if wants("renew") {
            g.set(Mode::Renew, 0, p.renew_clients, RELAY_BASE)?;
            out.renew = ladder(g, Mode::Renew, p, "renewals", &server)?;
            if kind == Kind::Xdpdhcp {
                eprintln!("xdpdhcp counters: {}", servers::xdpdhcp_counters(&server));
            }
        }
        drop_server(server, g, pass, net)?;
    }
    if wants("dora") {
        let (server, pass) = fresh(g)?;
        out.dora_gen = dora_ladder(g, p, &server)?;
        drop_server(server, g, pass, net)?;
    }
    if wants("perfdhcp") {
        let (server, pass) = fresh(g)?;
        g.set(Mode::Idle, 0, 0, RELAY_BASE)?;
        out.dora_perfdhcp =
            perfdhcp_ladder(net, p, &server, best(&out.dora_gen).map(|b| b.achieved_pps))?;
        drop_server(server, g, pass, net)?;
    }
    Ok(out)
}

fn drop_server(
    server: Running,
    g: &mut Generator,
    pass: Option<XdpLinkId>,
    net: &BenchNet,
) -> Result<()> {
    if let Some(link) = pass {
        let _in_server = net.server.enter_here()?;
        g.detach_pass(link)?;
    }
    g.set(Mode::Idle, 0, 0, RELAY_BASE)?;
    server.stop()
}

/// A step the server did not keep up with: loss over 1 %, or the generator could not even send
/// the offered rate (it shares the CPUs with the server).
fn saturated(p: &Point, sent: u64, secs: f64) -> bool {
    p.loss > MAX_LOSS || (sent as f64) < 0.6 * p.offered_pps * secs
}

/// Finds the highest rate with under 1 % loss: offered load climbs by `factor` until a step
/// fails, then `refine` bisection steps narrow the gap between the last good and the first bad
/// rate. `measure` runs one step and says whether the server failed to keep up (`None`: the
/// step cannot be run, e.g. out of fresh clients).
fn climb(
    first: f64,
    factor: f64,
    refine: u32,
    max_rate: f64,
    server: &Running,
    drain: Duration,
    mut measure: impl FnMut(f64) -> Result<Option<(Point, bool)>>,
) -> Result<Vec<Point>> {
    let mut points = vec![];
    let mut good = None;
    let mut bad = None;
    let mut rate = first;
    while rate <= max_rate {
        let Some((point, failed)) = measure(rate)? else {
            break;
        };
        points.push(point);
        if failed {
            bad = Some(rate);
            // An overloaded server works off its backlog before the next step.
            server.wait_idle_for(drain);
            break;
        }
        good = Some(rate);
        rate *= factor;
    }
    if let (Some(mut lo), Some(mut hi)) = (good, bad) {
        for _ in 0..refine {
            let mid = (lo * hi).sqrt().round();
            let Some((point, failed)) = measure(mid)? else {
                break;
            };
            points.push(point);
            if failed {
                hi = mid;
                server.wait_idle_for(drain);
            } else {
                lo = mid
            }
        }
    }
    points.sort_by(|a, b| a.offered_pps.total_cmp(&b.offered_pps));
    Ok(points)
}

/// Renewals (or any stateless request mode) at climbing rates.
fn ladder(
    g: &mut Generator,
    mode: Mode,
    p: &Params,
    what: &str,
    server: &Running,
) -> Result<Vec<Point>> {
    let template = g.template(mode);
    let secs = p.step.as_secs_f64();
    climb(
        FIRST_RATE,
        p.factor,
        p.refine,
        LAST_RATE,
        server,
        p.drain,
        |rate| {
            g.reset(1 << 16)?;
            let sent = g.paced(&template, rate, p.step)?;
            let c = g.settle(p.quiet, p.settle_max)?;
            let point = Point::measured(rate, sent, c.ack, secs);
            let loss = point.loss;
            eprintln!(
                "{what}: offered {rate:>9.0}/s sent {:>9.0}/s answered {:>9.0}/s loss {:>6.2} % (NAK {}, late {})",
                sent as f64 / secs,
                point.achieved_pps,
                loss * 100.0,
                c.nak,
                c.stale
            );
            Ok(Some((point, saturated(&point, sent, secs))))
        },
    )
}

/// DORA for new clients, driven in the kernel: DISCOVERs out, each OFFER turned into a REQUEST.
fn dora_ladder(g: &mut Generator, p: &Params, server: &Running) -> Result<Vec<Point>> {
    let template = g.template(Mode::Discover);
    let mut next = p.renew_clients + 1; // fresh client indices, above the preloaded ones
    let limit = p.renew_clients + p.dora_pool;
    let secs = p.step.as_secs_f64();
    climb(
        FIRST_RATE,
        p.factor,
        p.refine,
        LAST_RATE,
        server,
        p.drain,
        |rate| {
            let clients = (rate * secs) as u32;
            if next + clients > limit {
                return Ok(None);
            }
            g.set(Mode::Discover, next, clients, RELAY_BASE)?;
            g.reset(1 << 16)?;
            let sent = g.paced(&template, rate, p.step)?;
            let c = g.settle(p.quiet.max(Duration::from_millis(300)), p.settle_max)?;
            next += clients;
            let point = Point::measured(rate, sent, c.ack, secs);
            let loss = point.loss;
            eprintln!(
                "DORA (generator): offered {rate:>8.0}/s completed {:>8.0}/s loss {:>6.2} % (offers {}, requests {}, NAK {})",
                point.achieved_pps,
                loss * 100.0,
                c.offer,
                c.request_sent,
                c.nak
            );
            Ok(Some((point, saturated(&point, sent, secs))))
        },
    )
}

/// DORA for new clients, driven by perfdhcp (a relay; it cannot go much beyond 10 k/s here).
/// `hint`: the generator's DORA rate for this server; the climb starts two steps below it.
fn perfdhcp_ladder(
    net: &BenchNet,
    p: &Params,
    server: &Running,
    hint: Option<f64>,
) -> Result<Vec<Point>> {
    let secs = f64::from(p.perfdhcp_secs);
    let first = hint.map_or(FIRST_RATE, |h| {
        (h / (p.factor * p.factor)).floor().max(FIRST_RATE)
    });
    climb(first, p.factor, p.refine, 4e4, server, p.drain, |rate| {
        let (sent, acks) =
            servers::perfdhcp(net, rate as u32, p.perfdhcp_secs, p.dora_pool, p.quick)?;
        let point = Point::measured(rate, sent, acks, secs);
        let loss = point.loss;
        eprintln!(
            "DORA (perfdhcp): offered {rate:>8.0}/s completed {:>8.0}/s loss {:>6.2} %",
            point.achieved_pps,
            loss * 100.0
        );
        Ok(Some((point, saturated(&point, sent, secs))))
    })
}

/// Seconds and retry rounds until all were re-bound (`None`: not within the limit), and how
/// many of how many were.
type Storm = (Option<(f64, u32)>, (u32, u32));

/// Every preloaded direct client sends INIT-REBOOT at once; those without an answer retry
/// (after the replies settle) until all are re-bound.
fn reboot_storm(g: &mut Generator, p: &Params) -> Result<Storm> {
    let n = p.reboot_clients;
    let base = Ipv4Addr::from(u32::from(DIRECT_BASE).wrapping_sub(DIRECT_INDEX));
    g.set(Mode::Reboot, DIRECT_INDEX, n, base)?;
    g.reset(DIRECT_INDEX + n)?;
    let template = g.template(Mode::Reboot);
    let mut pending: Vec<u32> = (DIRECT_INDEX..DIRECT_INDEX + n).collect();
    let start = Instant::now();
    let start_ns = xdpdhcp_tests::loadgen::monotonic_ns();
    let mut rounds = 0;
    while !pending.is_empty() && start.elapsed() < p.reboot_limit {
        rounds += 1;
        g.set_todo(&pending)?;
        g.burst(&template, pending.len() as u32)?;
        g.settle(Duration::from_millis(400), Duration::from_secs(30))?;
        let acked = g.acked(DIRECT_INDEX, n)?;
        pending = (0..n)
            .filter(|i| !acked[*i as usize])
            .map(|i| DIRECT_INDEX + i)
            .collect();
    }
    let bound = n - pending.len() as u32;
    // From the first INIT-REBOOT sent to the last ACK received, as the kernel timed them.
    let last = g.counts()?.last_ack_ns;
    let secs = last.saturating_sub(start_ns) as f64 / 1e9;
    Ok((pending.is_empty().then_some((secs, rounds)), (bound, n)))
}

/// Failover between two xdpdhcp (the second a hot standby).
struct Failover {
    /// A new partner's full update (UPDREQALL): bindings received and how long it took.
    sync_bindings: u64,
    sync_s: f64,
    /// Renewals answered with the partner connected.
    renew: Vec<Point>,
    /// Binding updates per second the partner received while renewals ran at the best rate.
    bndupd_per_s: f64,
}

/// xdpdhcp with a failover partner: the partner's initial sync, renewals with every one sent
/// to the partner, and the binding-update rate that sustains.
fn bench_failover(net: &BenchNet, g: &mut Generator, p: &Params) -> Result<Failover> {
    eprintln!(
        "\n=== failover: xdpdhcp with a partner ({:.0} s)",
        elapsed()
    );
    let (server, partner, synced) = servers::xdpdhcp_failover_pair(net, p.renew_clients, 1000)?;
    let received = |partner: &servers::Partner| {
        partner.status()["counters"]["bndupd_received"]
            .as_u64()
            .unwrap_or(0)
    };
    let sync_bindings = received(&partner);
    eprintln!(
        "partner in sync: {sync_bindings} bindings in {:.2} s",
        synced.as_secs_f64()
    );
    g.set(Mode::Renew, 0, p.renew_clients, RELAY_BASE)?;
    let renew = ladder(g, Mode::Renew, p, "renewals (failover on)", &server)?;
    // Binding updates sustained at the best renewal rate: each client's renewals coalesce
    // into one update while the previous one is unacknowledged.
    let rate = best(&renew).map_or(1e4, |b| b.offered_pps);
    let template = g.template(Mode::Renew);
    let before = received(&partner);
    let t = Instant::now();
    g.paced(&template, rate, p.step * 3)?;
    let bndupd_per_s = (received(&partner) - before) as f64 / t.elapsed().as_secs_f64();
    eprintln!(
        "binding updates to the partner: {bndupd_per_s:.0}/s while renewing at {rate:.0}/s; partner: {}",
        partner.status()["counters"]
    );
    g.set(Mode::Idle, 0, 0, RELAY_BASE)?;
    server.stop()?;
    drop(partner);
    Ok(Failover {
        sync_bindings,
        sync_s: synced.as_secs_f64(),
        renew,
        bndupd_per_s,
    })
}

struct Scale {
    leases: u32,
    cold_start_s: f64,
    rss_mb: f64,
    map_mb: f64,
}

/// xdpdhcp with 1 M leases in its store: time from start to answering, memory.
fn bench_scale(net: &BenchNet, p: &Params) -> Result<Scale> {
    eprintln!("\n=== scale: xdpdhcp with {} leases", p.scale_leases);
    let pool_end = Ipv4Addr::new(172, 31, 255, 250);
    let t = Instant::now();
    let dir = net.dir.join("scale");
    fs::create_dir_all(&dir)?;
    // Written once; the measured start-up reads it back.
    let preload = Preload {
        relayed: p.scale_leases,
        direct: 0,
    };
    let server = servers::start_with_pool(Kind::Xdpdhcp, net, preload, "native", pool_end)?;
    server.stop()?;
    eprintln!(
        "store with {} leases written in {:.1} s",
        p.scale_leases,
        t.elapsed().as_secs_f64()
    );
    // Measure a cold start on that store (start_with_pool rewrites it: restart by hand).
    let server = restart_existing(net)?;
    let cold = server.ready_after.as_secs_f64();
    let scale = Scale {
        leases: p.scale_leases,
        cold_start_s: cold,
        rss_mb: server.rss_kib() as f64 / 1024.0,
        map_mb: servers::bpf_map_memory(server.pid()) as f64 / (1024.0 * 1024.0),
    };
    eprintln!(
        "cold start {:.2} s, RSS {:.0} MB, BPF maps {:.0} MB",
        scale.cold_start_s, scale.rss_mb, scale.map_mb
    );
    server.stop()?;
    Ok(scale)
}

/// Starts xdpdhcp again on the store and configuration it already has.
fn restart_existing(net: &BenchNet) -> Result<Running> {
    servers::restart_xdpdhcp(net)
}

// ------------------------------------------------------------------------------------------
// Reporting.

fn best(points: &[Point]) -> Option<Point> {
    points
        .iter()
        .filter(|p| p.loss < MAX_LOSS)
        .max_by(|a, b| a.achieved_pps.total_cmp(&b.achieved_pps))
        .copied()
}

fn summarize(
    results: &BTreeMap<&str, Outcome>,
    scale: Option<&Scale>,
    failover: Option<&Failover>,
    fastpath: Option<&Value>,
) -> Value {
    let by_server = |f: &dyn Fn(&Outcome) -> Value| -> Value {
        results
            .iter()
            .map(|(k, o)| (k.to_string(), f(o)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let mut s = json!({
        "renew_pps": by_server(&|o| best(&o.renew).map_or(Value::Null, |p| json!(round(p.achieved_pps)))),
        "renew_loss": by_server(&|o| best(&o.renew).map_or(Value::Null, |p| json!((p.loss * 1e4).round() / 1e4))),
        "dora_pps": by_server(&|o| {
            let b = [best(&o.dora_gen), best(&o.dora_perfdhcp)].into_iter().flatten().map(|p| p.achieved_pps).fold(f64::NAN, f64::max);
            if b.is_nan() { Value::Null } else { json!(round(b)) }
        }),
        "dora_pps_generator": by_server(&|o| best(&o.dora_gen).map_or(Value::Null, |p| json!(round(p.achieved_pps)))),
        "dora_pps_perfdhcp": by_server(&|o| best(&o.dora_perfdhcp).map_or(Value::Null, |p| json!(round(p.achieved_pps)))),
        "reboot_storm_s": by_server(&|o| o.reboot.map_or(Value::Null, |(s, _)| json!((s * 1000.0).round() / 1000.0))),
        "reboot_storm_clients": by_server(&|o| json!(o.reboot_clients)),
        "renew_curve": by_server(&|o| curve(&o.renew)),
        "dora_curve": by_server(&|o| curve(if o.dora_gen.is_empty() { &o.dora_perfdhcp } else { &o.dora_gen })),
    });
    if let Some(sc) = scale {
        s["rss_mb_1m"] = json!(round(sc.rss_mb));
        s["cold_start_s_1m"] = json!((sc.cold_start_s * 100.0).round() / 100.0);
        s["bpf_map_mb_1m"] = json!(round(sc.map_mb));
        s["scale_leases"] = json!(sc.leases);
    }
    if let Some(f) = failover {
        s["failover"] = json!({
            "sync_bindings": f.sync_bindings,
            "sync_s": (f.sync_s * 100.0).round() / 100.0,
            "sync_bndupd_per_s": round(f.sync_bindings as f64 / f.sync_s),
            "bndupd_per_s": round(f.bndupd_per_s),
            "renew_pps_failover_on": best(&f.renew).map(|p| round(p.achieved_pps)),
            "renew_pps_failover_off": s["renew_pps"]["xdpdhcp"].clone(),
            "renew_curve_failover_on": curve(&f.renew),
        });
    }
    if let Some(fp) = fastpath.and_then(Value::as_object) {
        for (k, v) in fp {
            s[k] = v.clone();
        }
    }
    s
}

fn curve(points: &[Point]) -> Value {
    points.iter().map(|p| json!({ "offered_pps": p.offered_pps, "answered_pps": p.achieved_pps.round(), "loss": (p.loss * 1e4).round() / 1e4 })).collect()
}

fn fmt_rate(v: Option<f64>) -> String {
    match v {
        None => "—".into(),
        Some(v) if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
        Some(v) if v >= 1e3 => format!("{:.1} k/s", v / 1e3),
        Some(v) => format!("{v:.0}/s"),
    }
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
        _ => "—".into(),
    }
}

fn markdown(
    results: &BTreeMap<&str, Outcome>,
    summary: &Value,
    scale: Option<&Scale>,
    failover: Option<&Failover>,
    fastpath: Option<&Value>,
) -> String {
    let order = ["xdpdhcp", "kea", "dhcpd", "dnsmasq"];
    let get = |key: &str, server: &str| summary[key][server].as_f64();
    // Reboot storms compare only at the same number of clients.
    let comparable = |server: &str| {
        results.get(server).map(|o| o.reboot_clients)
            == results.get("xdpdhcp").map(|o| o.reboot_clients)
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| workload | {} |",
        order
            .iter()
            .filter(|s| results.contains_key(*s))
            .copied()
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(
        t,
        "|---|{}",
        order
            .iter()
            .filter(|s| results.contains_key(*s))
            .map(|_| "---:|")
            .collect::<String>()
    );
    let row = |t: &mut String, label: &str, cell: &dyn Fn(&str) -> String| {
        let cells: Vec<String> = order
            .iter()
            .filter(|s| results.contains_key(*s))
            .map(|s| cell(s))
            .collect();
        let _ = writeln!(t, "| {label} | {} |", cells.join(" | "));
    };
    row(&mut t, "renewals, < 1 % loss", &|s| {
        fmt_rate(get("renew_pps", s))
    });
    row(&mut t, "DORA (XDP generator), < 1 % loss", &|s| {
        fmt_rate(get("dora_pps_generator", s))
    });
    row(&mut t, "DORA (perfdhcp), < 1 % loss", &|s| {
        fmt_rate(get("dora_pps_perfdhcp", s))
    });
    row(
        &mut t,
        "INIT-REBOOT storm: all re-bound in",
        &|s| match get("reboot_storm_s", s) {
            Some(v) if comparable(s) => format!("{v:.2} s"),
            Some(v) => format!(
                "{v:.2} s ({} clients)",
                results.get(s).map_or(0, |o| o.reboot_clients)
            ),
            None => results.get(s).map_or("—".into(), |o| {
                format!("{}/{} in limit", o.reboot_bound.0, o.reboot_bound.1)
            }),
        },
    );
    let ours = "xdpdhcp";
    let _ = writeln!(t);
    if results.contains_key(ours) {
        for peer in ["kea", "dhcpd", "dnsmasq"]
            .iter()
            .filter(|p| results.contains_key(**p))
        {
            let storm = match (get("reboot_storm_s", ours), get("reboot_storm_s", peer)) {
                (Some(a), Some(b)) if a > 0.0 && comparable(peer) => {
                    format!("{:.0}× faster", b / a)
                }
                _ => "—".into(),
            };
            let _ = writeln!(
                t,
                "xdpdhcp vs {peer}: renewals {}, DORA {}, reboot storm {storm}",
                ratio(get("renew_pps", ours), get("renew_pps", peer)),
                ratio(get("dora_pps", ours), get("dora_pps", peer)),
            );
        }
    }
    if let Some(sc) = scale {
        let _ = writeln!(
            t,
            "\nxdpdhcp with {} leases: cold start (store → serving) {:.2} s, daemon RSS {:.0} MB, BPF maps {:.0} MB",
            sc.leases, sc.cold_start_s, sc.rss_mb, sc.map_mb
        );
    }
    if let Some(f) = failover {
        let on = best(&f.renew).map(|p| p.achieved_pps);
        let _ = writeln!(
            t,
            "\nxdpdhcp failover (two xdpdhcp, hot standby): renewals {} with failover on vs {} off; \
             {} binding updates (BNDUPD) per second sustained to the partner during renewals; \
             a new partner learned {} bindings in {:.1} s ({:.0}/s)",
            fmt_rate(on),
            fmt_rate(get("renew_pps", "xdpdhcp")),
            f.bndupd_per_s.round(),
            f.sync_bindings,
            f.sync_s,
            f.sync_bindings as f64 / f.sync_s
        );
    }
    if let Some(fp) = fastpath {
        let _ = writeln!(
            t,
            "\nXDP program (BPF_PROG_TEST_RUN): {} ns per renewal ACK, {} ns per punt, {} ns per non-DHCP frame",
            fp["fastpath_ns_per_ack"], fp["fastpath_ns_per_punt"], fp["fastpath_ns_per_pass"]
        );
    }
    for (server, o) in results {
        for n in &o.notes {
            let _ = writeln!(t, "\nnote ({server}): {n}");
        }
    }
    t
}

fn report(args: &Args, table: &str, took: Duration) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "# Benchmarks\n\nProduced by `{}` ({} mode, {:.0} s) on {cpus} CPUs, Linux {}.\n\n{table}\n![rate against loss](bench-chart.png)\n\n{}\n",
        args.command,
        if args.quick { "quick" } else { "full" },
        took.as_secs_f64(),
        kernel.trim(),
        METHOD
    )
}

const METHOD: &str = "## Method\n\n\
- All servers run in one network namespace on a veth whose peer, in another namespace, is \
  driven by an XDP load generator (`bench-ebpf`): BPF_PROG_TEST_RUN in live-frames mode \
  transmits requests; an XDP program on the same veth counts the replies (and turns OFFERs \
  into REQUESTs for DORA). Both sides share this machine's CPUs.\n\
- Each server is configured for its best honest performance: no ping checks, warnings-only \
  logging, Kea multi-threaded. Leases are durable as each server makes them by default: \
  xdpdhcp commits to SQLite (WAL, synchronous=FULL) before replying; Kea appends to its \
  memfile CSV; dhcpd writes its leases file; dnsmasq its lease file.\n\
- Renewals: relayed REQUESTs (ciaddr, giaddr) round robin over the preloaded clients. DORA: \
  new clients. Reboot storm: every preloaded directly attached client broadcasts INIT-REBOOT \
  at once; clients without an answer ask again once the replies have settled, until all are \
  bound. Clients are preloaded into each server's own lease database before it starts.\n\
- A rate is the highest offered load answered with under 1 % loss; the chart shows loss \
  against offered load for each step.\n";

mod chart {
    use std::path::Path;

    use anyhow::{Result, anyhow};
    use plotters::prelude::*;

    use super::{Outcome, Point};

    fn font() -> Result<()> {
        // Any TrueType font from the system's font directories (XDG data dirs).
        let dirs =
            std::env::var("XDG_DATA_DIRS").unwrap_or_else(|_| "/usr/local/share:/usr/share".into());
        for d in dirs.split(':') {
            for name in [
                "fonts/truetype/dejavu/DejaVuSans.ttf",
                "fonts/TTF/DejaVuSans.ttf",
                "fonts/dejavu/DejaVuSans.ttf",
            ] {
                let p = Path::new(d).join(name);
                if let Ok(bytes) = std::fs::read(&p) {
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                        .map_err(|_| anyhow!("bad font {}", p.display()))?;
                    return Ok(());
                }
            }
        }
        Err(anyhow!(
            "no DejaVuSans.ttf found (install fonts-dejavu-core)"
        ))
    }

    pub fn draw(path: &Path, results: &std::collections::BTreeMap<&str, Outcome>) -> Result<()> {
        font()?;
        let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(700);
        panel(&left, "Renewals: loss against offered load", results, |o| {
            &o.renew
        })?;
        panel(
            &right,
            "DORA, new clients: loss against offered load",
            results,
            |o| {
                if o.dora_gen.is_empty() {
                    &o.dora_perfdhcp
                } else {
                    &o.dora_gen
                }
            },
        )?;
        root.present()?;
        Ok(())
    }

    fn panel(
        area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
        title: &str,
        results: &std::collections::BTreeMap<&str, Outcome>,
        points: impl Fn(&Outcome) -> &Vec<Point>,
    ) -> Result<()> {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d((1e2f64..1e7f64).log_scale(), 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc("offered requests per second (log)")
            .y_desc("loss %")
            .x_label_formatter(&|v| {
                if *v >= 1e6 {
                    format!("{:.0}M", v / 1e6)
                } else if *v >= 1e3 {
                    format!("{:.0}k", v / 1e3)
                } else {
                    format!("{v:.0}")
                }
            })
            .draw()?;
        let colors = [
            ("xdpdhcp", RED),
            ("kea", BLUE),
            ("dhcpd", GREEN),
            ("dnsmasq", MAGENTA),
        ];
        for (name, color) in colors {
            let Some(o) = results.get(name) else { continue };
            let series: Vec<(f64, f64)> = points(o)
                .iter()
                .map(|p| (p.offered_pps, (p.loss * 100.0).min(100.0)))
                .collect();
            chart
                .draw_series(LineSeries::new(series.clone(), color.stroke_width(3)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart.draw_series(
                series
                    .into_iter()
                    .map(|(x, y)| Circle::new((x, y), 4, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        Ok(())
    }
}
