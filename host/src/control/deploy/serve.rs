//! The worker side of a deploy: hears `<nodename>.celeriac.deploy`, answers `received` as
//! soon as a request for this node arrives, and carries requests out one at a time, in the
//! order they came, through the registry (the same path as a hot swap: tasks already running
//! finish on the version they started with).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::broker::{Broker, Delivery};
use crate::registry::{LoadedComponent, Registry};

use super::wire::{Action, Reply, Request, Status, reply_exchange, worker_queue};
use crate::control::listen::listen;

/// Hears deploy requests for `nodename` and carries them out on `registry` until aborted.
/// `subscribed` is told once the first subscription attempt is over.
pub(in crate::control) async fn serve<B: Broker>(
    broker: Arc<B>,
    registry: Arc<Registry>,
    nodename: String,
    subscribed: oneshot::Sender<()>,
) {
    // Hearing and carrying out run side by side in this one task, so a long compile never
    // delays the receipt of the next request, and aborting the task stops both.
    let (accepted, mut to_carry_out) = mpsc::unbounded_channel::<Request>();
    let queue = worker_queue(&nodename);
    let hear = listen(
        &*broker,
        &queue,
        "deploy",
        subscribed,
        |_| {},
        |delivery| {
            let (broker, nodename, accepted) =
                (Arc::clone(&broker), nodename.clone(), accepted.clone());
            async move {
                if let Some(request) = receive(&*broker, &nodename, delivery).await {
                    // The receiver lives as long as this function.
                    let _ = accepted.send(request);
                }
            }
        },
    );
    let carry_out_all = async {
        while let Some(request) = to_carry_out.recv().await {
            let routing_key = request.reply_to.clone();
            let reply = carry_out(&registry, &nodename, request).await;
            send_reply(&*broker, &routing_key, &reply).await;
        }
    };
    tokio::join!(hear, carry_out_all);
}

/// Decodes a delivery and, if it is a request for this node, answers `received` and
/// returns it.
async fn receive<B: Broker>(broker: &B, nodename: &str, delivery: Delivery) -> Option<Request> {
    let request = match Request::decode(delivery) {
        Ok(request) => request,
        Err(err) => {
            tracing::warn!("deploy: {err}; ignored");
            return None;
        }
    };
    if !request.is_for(nodename) {
        tracing::debug!(
            "deploy: {} is for {:?}, not this node",
            request.action.describe(),
            request.destination
        );
        return None;
    }
    tracing::info!(
        "deploy: received {} (ticket {})",
        request.action.describe(),
        request.ticket
    );
    let receipt = Reply {
        status: Status::Received,
        ..reply_to(&request, nodename)
    };
    send_reply(broker, &request.reply_to, &receipt).await;
    Some(request)
}

/// Installs or rolls back as asked; the reply says what serves now, or why nothing changed.
async fn carry_out(registry: &Registry, nodename: &str, request: Request) -> Reply {
    let base = reply_to(&request, nodename);
    let description = request.action.describe();
    let outcome = match request.action {
        Action::Install(package) => {
            let (file, digest) = (package.file.clone(), package.digest.clone());
            match tokio::task::spawn_blocking(move || package.unpack()).await {
                Ok(Ok(component)) => registry
                    .install(&file, component, &digest)
                    .await
                    .map_err(|err| err.to_string()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(err) => Err(format!("unpacking was interrupted: {err}")),
            }
        }
        Action::Rollback { name } => registry
            .rollback(&name)
            .await
            .map_err(|err| err.to_string()),
    };
    match outcome {
        Ok(component) => {
            tracing::info!(
                "deploy: {description} done: {} {} ({}) serves now",
                component.file_name(),
                component.version,
                component.digest
            );
            served(base, &component)
        }
        Err(error) => {
            tracing::error!(
                "deploy: refused {description}: {error}; what served before keeps serving"
            );
            Reply {
                status: Status::Error,
                error: Some(error),
                ..base
            }
        }
    }
}

/// The fields every reply to `request` from `nodename` carries.
fn reply_to(request: &Request, nodename: &str) -> Reply {
    let (file, digest) = match &request.action {
        Action::Install(package) => (package.file.clone(), Some(package.digest.clone())),
        Action::Rollback { name } => (name.clone(), None),
    };
    Reply {
        nodename: nodename.to_owned(),
        ticket: request.ticket.clone(),
        status: Status::Received,
        file,
        digest,
        version: None,
        tasks: Vec::new(),
        error: None,
    }
}

/// An `ok` reply naming what serves now.
fn served(base: Reply, component: &LoadedComponent) -> Reply {
    Reply {
        status: Status::Ok,
        file: component.file_name(),
        digest: Some(component.digest.clone()),
        version: Some(component.version.clone()),
        tasks: component
            .tasks
            .iter()
            .map(|task| task.name.clone())
            .collect(),
        ..base
    }
}

/// Publishes `reply` to the sender listening on `routing_key`; a failure is logged (the
/// sender then reports this node as silent).
async fn send_reply<B: Broker>(broker: &B, routing_key: &str, reply: &Reply) {
    if let Err(err) = broker
        .publish_broadcast(&reply_exchange(), routing_key, &reply.encode())
        .await
    {
        tracing::error!(
            "deploy: cannot reply about {} (ticket {}): {err}",
            reply.file,
            reply.ticket
        );
    }
}
