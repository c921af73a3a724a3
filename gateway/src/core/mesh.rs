//! The core's side of the mesh: a request's message to another core waits
//! for room in that core's channel ([`Core::route`], the backpressure that
//! stops a busy connection being read), while the core's own traffic
//! (deliveries, pushes, answers) never waits ([`Core::forward`]): what
//! finds a peer's channel full queues behind it, in order, and one task
//! drains it at the peer's pace.

use std::rc::Rc;

use glommio::{GlommioError, ResourceType};

use super::{Core, CoreMsg};
use crate::metrics::CoreMetrics;

/// What a core queued for a peer whose channel was full.
#[derive(Default)]
pub(super) struct Overflow {
    /// In the order it was forwarded.
    queue: std::collections::VecDeque<CoreMsg>,
    /// A task is sending the queue; new messages go behind it.
    draining: bool,
}

impl Core {
    /// Sends a request's `msg` to `core`, handling it in place when that
    /// is us; waits while the peer's channel is full (the backpressure that
    /// stops a busy connection being read). A core's own traffic goes with
    /// [`Core::forward`] instead.
    pub async fn route(self: &Rc<Self>, core: usize, msg: CoreMsg) {
        let Err(msg) = self.try_route(core, msg) else {
            return;
        };
        CoreMetrics::inc(&self.metrics().mesh_sent);
        if self.mesh.send_to(core, msg).await.is_err() {
            peer_gone(core);
        }
    }

    /// [`Core::route`] when it need not wait: `Err(msg)` when the peer's
    /// channel is full (then route it, waiting).
    pub fn try_route(self: &Rc<Self>, core: usize, msg: CoreMsg) -> Result<(), CoreMsg> {
        if core == self.id {
            self.handle(msg);
            return Ok(());
        }
        match self.mesh.try_send_to(core, msg) {
            Ok(()) => CoreMetrics::inc(&self.metrics().mesh_sent),
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => return Err(msg),
            Err(_) => peer_gone(core),
        }
        Ok(())
    }

    /// Sends a core's own traffic (deliveries, pushes, answers, kicks) to
    /// `core` without ever waiting: what finds the peer's channel full
    /// queues here, in order, behind it. A core's inbox must not wait on a
    /// peer whose inbox may be waiting on it (with both channels full, the
    /// two cores would stall for ever); the wait belongs to the connections
    /// whose sends make the traffic ([`Core::route`]), and it reaches them
    /// because the queue drains at the peer's pace.
    pub fn forward(self: &Rc<Self>, core: usize, msg: CoreMsg) {
        if core == self.id {
            return self.handle(msg);
        }
        CoreMetrics::inc(&self.metrics().mesh_sent);
        let mut overflows = self.overflows.borrow_mut();
        let Some(overflow) = overflows.get_mut(core) else {
            return;
        };
        if overflow.draining {
            overflow.queue.push_back(msg);
            return CoreMetrics::inc(&self.metrics().mesh_overflows);
        }
        match self.mesh.try_send_to(core, msg) {
            Ok(()) => {}
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                overflow.queue.push_back(msg);
                overflow.draining = true;
                CoreMetrics::inc(&self.metrics().mesh_overflows);
                // glommio runs a new task at once, up to its first wait.
                drop(overflows);
                glommio::spawn_local(self.clone().drain_overflow(core)).detach();
            }
            Err(_) => peer_gone(core),
        }
    }

    /// Sends what queued for `core` in order, as its channel makes room.
    async fn drain_overflow(self: Rc<Self>, core: usize) {
        loop {
            let next = self
                .overflows
                .borrow_mut()
                .get_mut(core)
                .and_then(|overflow| overflow.queue.pop_front());
            let Some(msg) = next else {
                break;
            };
            if self.mesh.send_to(core, msg).await.is_err() {
                peer_gone(core);
                break;
            }
        }
        if let Some(overflow) = self.overflows.borrow_mut().get_mut(core) {
            overflow.queue.clear();
            overflow.draining = false;
        }
    }
}

/// A peer that refuses a message is shutting down; its connections are
/// closing anyway.
fn peer_gone(core: usize) {
    tracing::debug!(peer = core, "mesh peer gone");
}
