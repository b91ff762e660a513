//! Services and task ownership: a service's routes, limits and guards are
//! served; its tasks (and every other task of the node) end on shutdown and
//! when the last handle is dropped; route names cannot be taken twice.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use butter::node::{Routes, Service, ServiceContext};
use butter::{Error, Node, NodeId, WeakNode};
use common::{eventually, loopback, within};
use tokio::sync::oneshot;

/// Echoes small bodies; refuses callers on its deny list before reading;
/// runs a task that holds `alive` until it is cancelled.
struct Probe {
    alive: Mutex<Option<oneshot::Sender<()>>>,
    denied: Arc<Mutex<Vec<NodeId>>>,
    node: Arc<Mutex<Option<WeakNode>>>,
}

impl Probe {
    fn new() -> (Self, oneshot::Receiver<()>, Arc<Mutex<Vec<NodeId>>>) {
        let (tx, rx) = oneshot::channel();
        let denied = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe {
            alive: Mutex::new(Some(tx)),
            denied: denied.clone(),
            node: Default::default(),
        };
        (probe, rx, denied)
    }
}

impl Service for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        routes.typed(
            "probe/echo",
            16,
            |_peer, _from: SocketAddr, v: Vec<u8>| async move { Ok(v) },
        );
        let denied = self.denied.clone();
        routes.guard("probe/echo", move |peer, _from| {
            if denied.lock().unwrap().contains(peer) {
                Err(Error::handler("denied"))
            } else {
                Ok(())
            }
        });
    }

    fn start(&self, ctx: &ServiceContext) {
        *self.node.lock().unwrap() = Some(ctx.node());
        let alive = self.alive.lock().unwrap().take();
        ctx.spawn(async move {
            let _alive = alive;
            std::future::pending::<()>().await
        });
    }
}

#[tokio::test]
async fn a_service_serves_its_routes_with_its_limits_and_guards() {
    let (probe, _alive, denied) = Probe::new();
    let server = Node::builder()
        .listen(loopback())
        .service(probe)
        .spawn()
        .await
        .unwrap();
    let client = Node::builder().listen(loopback()).spawn().await.unwrap();
    let back: Vec<u8> = within(
        10,
        "echo",
        client.call_typed(server.addr(), "probe/echo", &vec![1u8, 2, 3]),
    )
    .await
    .unwrap();
    assert_eq!(back, vec![1, 2, 3]);
    // The route's own limit, not the node's 16 MiB.
    let big = within(
        10,
        "too big",
        client.call(server.addr(), "probe/echo", vec![0u8; 17]),
    )
    .await;
    assert!(
        matches!(big, Err(Error::TooLarge { limit: 16, .. })),
        "{big:?}"
    );
    denied.lock().unwrap().push(client.id());
    let refused = within(
        10,
        "denied",
        client.call_typed::<_, Vec<u8>>(server.addr(), "probe/echo", &vec![1u8]),
    )
    .await;
    assert!(
        matches!(&refused, Err(Error::Remote(m)) if m.contains("denied")),
        "{refused:?}"
    );
    assert_eq!(server.stats().requests_refused, 1);
}

/// A node running `probe` and a plain one, each in the other's known hosts:
/// connections both ways (accept, serve and watcher tasks on each side).
async fn known_to_each_other(probe: Probe) -> (Node, Node) {
    let a = Node::builder()
        .listen(loopback())
        .service(probe)
        .spawn()
        .await
        .unwrap();
    let b = Node::builder().listen(loopback()).spawn().await.unwrap();
    within(10, "a knows b", a.add_known_host(b.addr()))
        .await
        .unwrap();
    within(10, "b knows a", b.add_known_host(a.addr()))
        .await
        .unwrap();
    (a, b)
}

#[tokio::test]
async fn shutdown_cancels_and_awaits_every_task() {
    let (probe, alive, _) = Probe::new();
    let (a, _b) = known_to_each_other(probe).await;
    assert!(a.running_tasks() > 3, "{} tasks", a.running_tasks());
    within(10, "shutdown", a.shutdown()).await;
    assert_eq!(a.running_tasks(), 0);
    // The service's task was dropped, and with it what it held.
    assert!(within(1, "task dropped", alive).await.is_err());
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_node() {
    let (probe, alive, _) = Probe::new();
    let weak = probe.node.clone();
    let (a, b) = known_to_each_other(probe).await;
    let handle = weak.lock().unwrap().clone().unwrap();
    assert!(handle.upgrade().is_some());
    drop(a);
    // Background tasks hold the node weakly: nothing keeps it running.
    assert!(within(5, "service task dropped", alive).await.is_err());
    eventually(5, "the handle is gone", || handle.upgrade().is_none()).await;
    // Its connections closed with it.
    eventually(10, "b's connection to a closes", || {
        b.connection_count() == 0
    })
    .await;
}

struct Squatter(&'static str);

impl Service for Squatter {
    fn name(&self) -> &'static str {
        "squatter"
    }

    fn routes(&self, routes: &mut Routes<'_>) {
        routes.typed(self.0, 16, |_p, _f: SocketAddr, (): ()| async { Ok(()) });
    }
}

#[tokio::test]
async fn a_route_name_cannot_be_taken_twice() {
    // The platform's own route...
    let taken = Node::builder()
        .listen(loopback())
        .service(Squatter("butter/ping"))
        .spawn()
        .await;
    assert!(
        matches!(&taken, Err(Error::Config(m)) if m.contains("butter/ping")),
        "{taken:?}"
    );
    // ...another service's, or an application route.
    let twice = Node::builder()
        .listen(loopback())
        .service(Squatter("app/x"))
        .service(Squatter("app/x"))
        .spawn()
        .await;
    assert!(matches!(twice, Err(Error::Config(_))), "{twice:?}");
    let app = Node::builder()
        .listen(loopback())
        .typed_route("app/y", |_p, (): ()| async { Ok(()) })
        .service(Squatter("app/y"))
        .spawn()
        .await;
    assert!(matches!(app, Err(Error::Config(_))), "{app:?}");
    // A service may use the reserved namespace for a name that is free.
    let free = Node::builder()
        .listen(loopback())
        .service(Squatter("butter/free"))
        .spawn()
        .await
        .unwrap();
    let client = Node::builder().listen(loopback()).spawn().await.unwrap();
    within(
        10,
        "call",
        client.call_typed::<_, ()>(free.addr(), "butter/free", &()),
    )
    .await
    .unwrap();
}
