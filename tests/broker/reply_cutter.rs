//! A TCP proxy in front of Redis that, when armed, swallows the next reply and closes the
//! client's connection: the command ran on the server, but its caller never hears back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct ReplyCutter {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
}

impl ReplyCutter {
    /// Starts proxying to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let armed = Arc::new(AtomicBool::new(false));
        let armed_for_accept = Arc::clone(&armed);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream)
                    .await
                    .unwrap_or_else(|e| panic!("Redis at {upstream} is unreachable: {e}"));
                tokio::spawn(relay(client, server, Arc::clone(&armed_for_accept)));
            }
        });
        ReplyCutter { addr, armed }
    }

    /// A Redis URL going through the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// The next reply from the server is dropped along with its connection.
    pub fn cut_next_reply(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

async fn relay(client: TcpStream, server: TcpStream, armed: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut server_write).await });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match server_read.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if armed.swap(false, Ordering::SeqCst) {
            // Dropping the halves closes the client's side: its request is left unanswered.
            return;
        }
        if client_write.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
