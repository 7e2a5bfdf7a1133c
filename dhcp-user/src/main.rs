//! The `xdpdhcp` command: the daemon and the tools to look at it.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand};
use dhcp_user::{config, daemon, fastpath};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "xdpdhcp",
    version,
    about = "DHCPv4 server whose renewals are answered in XDP",
    long_about = "A DHCPv4 server for networks with many clients. An XDP program answers lease \
renewals (RENEWING, REBINDING, INIT-REBOOT) straight from a BPF map at line rate; the daemon \
allocates addresses, stores every lease in SQLite before replying, and keeps the map in sync. \
No client is ever told it holds an address longer than the store has recorded.\n\n\
Start with `xdpdhcp check-config FILE`, then `xdpdhcp serve --config FILE` (as root)."
)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `dhcp_user=debug` (also RUST_LOG).
    #[arg(long, global = true, default_value = "info", env = "RUST_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: load the lease store, fill the fast path, attach XDP, serve.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file; prints every error with its line number.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Counters of a running server: fast path (per outcome) and daemon.
    Stats(Target),
    /// Leases held by a running server.
    Leases(Target),
    /// Failover with the partner server: state, or the operator's partner-down.
    #[command(subcommand)]
    Failover(FailoverCommand),
}

#[derive(Subcommand)]
enum FailoverCommand {
    /// Both servers' states, the connection, unacknowledged updates and the pool split.
    Status(Target),
    /// Declare the partner down (it is, and will stay down until it recovers from us): this
    /// server then answers every client, and after MCLT also hands out the partner's
    /// addresses. Only from communications-interrupted, never while the partner is connected.
    PartnerDown(Target),
}

#[derive(Args)]
struct Target {
    /// The server's configuration (to find its control socket and pinned counters).
    #[arg(long, short, conflicts_with = "socket")]
    config: Option<PathBuf>,
    /// Control socket of the server [default: /run/xdpdhcp/control.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        // A reader that goes away (`xdpdhcp stats | head`) ends the command quietly.
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve { config } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|rt| rt.block_on(daemon::serve(&config))),
        Command::CheckConfig { file } => check_config(&file),
        Command::Stats(t) => stats(&t),
        Command::Leases(t) => leases(&t),
        Command::Failover(FailoverCommand::Status(t)) => failover_status(&t),
        Command::Failover(FailoverCommand::PartnerDown(t)) => partner_down(&t),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdpdhcp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &Path) -> Result<()> {
    let c = config::load(file).map_err(|e| anyhow!("{e}"))?;
    println!(
        "{}: OK — {} interface(s), {} subnet(s), {} pool addresses, {} reservation(s)",
        file.display(),
        c.interfaces.len(),
        c.subnets.len(),
        c.pool_size() - c.reservations.len() as u64,
        c.reservations.len()
    );
    Ok(())
}

fn endpoints(t: &Target) -> Result<(PathBuf, Option<PathBuf>)> {
    match (&t.config, &t.socket) {
        (Some(c), _) => {
            let c = config::load(c).map_err(|e| anyhow!("{e}"))?;
            Ok((c.control_socket, Some(c.bpffs_dir)))
        }
        (None, Some(s)) => Ok((s.clone(), None)),
        (None, None) => Ok((
            "/run/xdpdhcp/control.sock".into(),
            Some("/sys/fs/bpf/xdpdhcp".into()),
        )),
    }
}

fn ask(socket: &Path, command: &str) -> Result<Value> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(stream, "{}", serde_json::json!({ "command": command }))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line).context("reply from the daemon")?;
    if let Some(e) = v.get("error") {
        return Err(anyhow!("daemon: {e}"));
    }
    Ok(v)
}

fn stats(t: &Target) -> Result<()> {
    let (socket, pins) = endpoints(t)?;
    let v = match ask(&socket, "stats") {
        Ok(v) => v,
        Err(e) => {
            // The daemon is not answering: the pinned counters still tell what XDP did.
            let pins = pins.ok_or(e)?;
            let c = fastpath::read_pinned_counters(&pins)?;
            eprintln!(
                "xdpdhcp: the daemon is not answering; fast-path counters from {}",
                pins.display()
            );
            let fast: serde_json::Map<_, _> = c
                .iter()
                .map(|(k, n)| (k.name().to_string(), n.into()))
                .collect();
            serde_json::json!({ "fast_path": fast })
        }
    };
    if t.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if let Some(fast) = v.get("fast_path").and_then(Value::as_object) {
        println!("fast path (XDP):");
        for counter in dhcp_common::Counter::ALL {
            let n = fast
                .get(counter.name())
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if n > 0 {
                println!("  {:<28} {:>12}   {}", counter.name(), n, counter.help());
            }
        }
    }
    if let Some(d) = v.get("daemon").and_then(Value::as_object) {
        println!("daemon:");
        for (k, n) in d {
            println!("  {k:<28} {n:>12}");
        }
    }
    if let Some(pools) = v.get("pools").and_then(Value::as_array) {
        println!("pools:");
        for p in pools {
            println!(
                "  {:<20} {:>8} free of {}",
                p["subnet"].as_str().unwrap_or(""),
                p["free"],
                p["total"]
            );
        }
    }
    if let Some(n) = v.get("leases") {
        println!("active leases: {n}");
    }
    Ok(())
}

fn failover_status(t: &Target) -> Result<()> {
    let (socket, _) = endpoints(t)?;
    let v = ask(&socket, "failover-status")?;
    if t.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let since = |k: &str| {
        let at = v[k].as_u64().unwrap_or(0);
        let ago = dhcp_user::clock::unix_now().saturating_sub(at);
        if at == 0 {
            "".to_string()
        } else {
            format!(" (for {ago} s)")
        }
    };
    println!(
        "relationship {} — this server is {}",
        v["name"].as_str().unwrap_or(""),
        v["role"].as_str().unwrap_or("")
    );
    println!(
        "  my state:      {}{}{}",
        v["my_state"].as_str().unwrap_or(""),
        since("my_state_since"),
        if v["starting_up"].as_bool() == Some(true) {
            ", starting up"
        } else {
            ""
        }
    );
    println!(
        "  partner state: {}{}",
        v["partner_state"].as_str().unwrap_or(""),
        since("partner_state_since")
    );
    println!("  service:       {}", v["service"].as_str().unwrap_or(""));
    match v["partner"].as_object() {
        Some(p) => println!(
            "  connection:    up to {} (last heard {} s ago)",
            p["vendor"].as_str().unwrap_or("?"),
            p["last_heard_s_ago"]
        ),
        None => println!("  connection:    down"),
    }
    println!("  mclt:          {} s", v["mclt"]);
    println!(
        "  updates:       {} unacknowledged, {} queued",
        v["unacked_updates"], v["queued_updates"]
    );
    println!(
        "  pool split:    {} free for the primary, {} for the secondary",
        v["pool"]["free_for_primary"], v["pool"]["free_for_secondary"]
    );
    println!(
        "  load balance:  {} of 256 buckets ours{}",
        v["load_balance"]["our_buckets"],
        if v["load_balance"]["active"].as_bool() == Some(true) {
            " (active)"
        } else {
            " (inactive outside normal)"
        }
    );
    if let Some(c) = v["counters"].as_object() {
        println!("  counters:");
        for (k, n) in c {
            println!("    {k:<28} {n:>12}");
        }
    }
    Ok(())
}

fn partner_down(t: &Target) -> Result<()> {
    let (socket, _) = endpoints(t)?;
    let v = ask(&socket, "failover-partner-down")?;
    println!("{}", v["ok"].as_str().unwrap_or("done"));
    Ok(())
}

fn leases(t: &Target) -> Result<()> {
    let (socket, _) = endpoints(t)?;
    let v = ask(&socket, "leases")?;
    if t.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let now = dhcp_user::clock::unix_now() as i64;
    println!(
        "{:<16} {:<9} {:<18} {:>10}  client id / hostname",
        "address", "state", "hardware", "ends in"
    );
    for l in v["leases"].as_array().into_iter().flatten() {
        let ends = l["ends"].as_i64().unwrap_or(0) - now;
        println!(
            "{:<16} {:<9} {:<18} {:>9}s  {} {}",
            l["address"].as_str().unwrap_or(""),
            l["state"].as_str().unwrap_or(""),
            l["hwaddr"].as_str().unwrap_or("-"),
            ends,
            l["client_id"].as_str().unwrap_or("-"),
            l["hostname"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}
