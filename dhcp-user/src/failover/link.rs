//! TCP connections to the partner: a listener on our address and port, a connector that dials
//! the partner from our address (dhcpd recognises its partner by that source address), and one
//! task per connection that frames messages in and batches writes out.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::mpsc,
};
use tracing::{debug, info, warn};

use super::{
    config::FailoverConfig,
    engine::LinkId,
    wire::{Framer, Message},
};

/// What the connection tasks report to the daemon.
#[derive(Debug)]
pub enum LinkEvent {
    /// A connection is up; messages for it go into the sender (already encoded).
    Up(LinkId, mpsc::UnboundedSender<Vec<u8>>),
    Message(LinkId, Box<Message>),
    Down(LinkId, String),
}

/// Retry interval of the connector.
const RECONNECT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// Starts the listener and the connector. `wanted` tells the connector whether to dial (no
/// connection up or opening).
pub fn spawn(
    cfg: &FailoverConfig,
    wanted: Arc<AtomicBool>,
    events: mpsc::Sender<LinkEvent>,
) -> anyhow::Result<()> {
    let local = SocketAddrV4::new(cfg.address, cfg.port);
    let std_listener = bind_listener(local)?;
    let listener = TcpListener::from_std(std_listener)?;
    let peer = cfg.peer_address;
    let peer_port = cfg.peer_port;
    let our_address = cfg.address;
    tokio::spawn(listen(listener, peer, events.clone()));
    tokio::spawn(dial(
        our_address,
        SocketAddrV4::new(peer, peer_port),
        wanted,
        events,
    ));
    info!(%local, partner = %SocketAddrV4::new(peer, peer_port), "failover: listening");
    Ok(())
}

fn bind_listener(local: SocketAddrV4) -> anyhow::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(local).into()).map_err(|e| {
        anyhow::anyhow!(
            "failover: cannot listen on {local}: {e} (is `address` one of this host's addresses?)"
        )
    })?;
    s.listen(16)?;
    Ok(s.into())
}

async fn listen(listener: TcpListener, peer: Ipv4Addr, events: mpsc::Sender<LinkEvent>) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                if from.ip() != std::net::IpAddr::V4(peer) {
                    warn!(%from, "failover: connection from a stranger refused (only {peer} is our partner)");
                    continue;
                }
                debug!(%from, "failover: partner connected to us");
                tokio::spawn(run(stream, events.clone()));
            }
            Err(e) => {
                warn!("failover: accept failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn dial(
    ours: Ipv4Addr,
    peer: SocketAddrV4,
    wanted: Arc<AtomicBool>,
    events: mpsc::Sender<LinkEvent>,
) {
    let mut logged = false;
    loop {
        if wanted.load(Ordering::Relaxed) {
            match connect(ours, peer).await {
                Ok(stream) => {
                    logged = false;
                    wanted.store(false, Ordering::Relaxed);
                    tokio::spawn(run(stream, events.clone()));
                }
                Err(e) => {
                    if !logged {
                        info!(
                            "failover: cannot reach the partner at {peer} ({e}); retrying every {} s",
                            RECONNECT.as_secs()
                        );
                        logged = true;
                    }
                }
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

async fn connect(ours: Ipv4Addr, peer: SocketAddrV4) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(ours, 0)))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(SocketAddr::V4(peer))).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

/// One connection: reads whole messages to the daemon, writes what the daemon sends.
async fn run(stream: TcpStream, events: mpsc::Sender<LinkEvent>) {
    let id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    if events.send(LinkEvent::Up(id, tx)).await.is_err() {
        return;
    }
    let (mut reader, mut writer) = stream.into_split();
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 64 * 1024];
    let reason = 'link: loop {
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) => break 'link "closed by the partner".to_string(),
                Ok(n) => {
                    framer.push(&buf[..n]);
                    loop {
                        match framer.next_message() {
                            Ok(Some(m)) => {
                                if events.send(LinkEvent::Message(id, Box::new(m))).await.is_err() {
                                    break 'link "shutting down".to_string();
                                }
                            }
                            Ok(None) => break,
                            Err(e) => break 'link format!("protocol error: {e}"),
                        }
                    }
                }
                Err(e) => break 'link format!("read failed: {e}"),
            },
            out = rx.recv() => match out {
                Some(mut batch) => {
                    // Everything queued meanwhile goes in the same write.
                    while batch.len() < 256 * 1024 {
                        match rx.try_recv() {
                            Ok(more) => batch.extend_from_slice(&more),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = writer.write_all(&batch).await {
                        break 'link format!("write failed: {e}");
                    }
                }
                None => break 'link "closed by us".to_string(),
            },
        }
    };
    let _ = writer.shutdown().await;
    let _ = events.send(LinkEvent::Down(id, reason)).await;
}
