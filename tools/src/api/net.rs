//! Sockets: the docker-bridge address check, the accept loop, serving (or dropping) a connection.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tower_service::Service;

/// How long a shutdown lets open connections finish before they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The interface whose address `allow_docker_bridge` accepts: dockerd's default bridge.
pub const DOCKER_BRIDGE_INTERFACE: &str = "docker0";

/// Whether `ip` is an IPv4 address assigned to the [`DOCKER_BRIDGE_INTERFACE`] interface of
/// this machine (read with `getifaddrs`). False on any error.
pub fn is_docker_bridge_address(ip: std::net::IpAddr) -> bool {
    let std::net::IpAddr::V4(want) = ip else {
        return false;
    };
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we free below with freeifaddrs; the
    // list is only read while it is alive, and each pointer is checked for null first.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return false;
        }
        let mut found = false;
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null()
                || ifa.ifa_name.is_null()
                || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET
            {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name);
            if name.to_bytes() != DOCKER_BRIDGE_INTERFACE.as_bytes() {
                continue;
            }
            let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            if std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == want {
                found = true;
                break;
            }
        }
        libc::freeifaddrs(head);
        found
    }
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    while conns.try_join_next().is_some() {}
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_connection(stream, router.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_millis(500), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.shutdown().await;
    }
    tracing::info!("stand-in contact-tracing API stopped");
}

/// Asks the connection task to drop its connection without answering.
#[derive(Clone)]
pub(super) struct ConnKill(pub(super) Arc<Notify>);

async fn serve_connection(stream: TcpStream, router: Router, mut stop: watch::Receiver<bool>) {
    let kill = Arc::new(Notify::new());
    let svc = {
        let kill = kill.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnKill(kill.clone()));
            let mut router = router.clone();
            router.call(req.map(Body::new))
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut deadline: Option<tokio::time::Instant> = None;
    if *stop.borrow_and_update() {
        conn.as_mut().graceful_shutdown();
        deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
    }
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = kill.notified() => {
                tracing::debug!("dropping connection without an answer (apply_then_drop)");
                return; // drops `conn`: the socket closes with no response bytes
            }
            _ = stop.changed(), if deadline.is_none() => {
                conn.as_mut().graceful_shutdown();
                deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() => return,
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
