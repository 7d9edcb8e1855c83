//! A server the test runs inside a namespace: a current-thread runtime on
//! the namespace's thread, a listener on 127.0.0.1:PORT bound before the
//! call returns, then the caller's server on it for the test's life.

use std::future::Future;
use std::time::Duration;

use crate::Netns;

/// Binds 127.0.0.1:`port` inside `netns` and runs `serve` on the listener
/// (on a thread of its own); returns once the listener is bound. `what`
/// names the server in the panic messages.
pub fn serve_in<F, Fut>(netns: &Netns, port: u16, what: &'static str, serve: F)
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    netns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap_or_else(|e| panic!("bind {what} on 127.0.0.1:{port}: {e}"));
            tx.send(()).expect("ready");
            serve(listener).await;
        });
    });
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("{what} up on 127.0.0.1:{port} within 5 s"));
}
