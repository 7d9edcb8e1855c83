//! A fake Kubernetes API server inside a namespace.

use super::*;

pub use segwatch::testing::FakeApiServer;

/// A [`FakeApiServer`] on 127.0.0.1:`port` inside `netns` (0: any free
/// port), answering lists with `objects`.
pub fn fake_api_server(netns: &Netns, port: u16, objects: Vec<serde_json::Value>) -> FakeApiServer {
    // Sockets belong to the namespace they were made in; the threads that
    // use them may live anywhere.
    let listener = netns
        .run(move || TcpListener::bind(("127.0.0.1", port)))
        .join()
        .expect("bind thread")
        .expect("bind the fake API server");
    FakeApiServer::serve(listener, objects)
}
