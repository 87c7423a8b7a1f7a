//! [`Resume`]: how work running on another thread answers a request its handler put
//! off with `Reply::Later`.
//!
//! The answer is posted to the owning loop's mailbox and its doorbell rung; the loop
//! writes it as if the client had just asked — or, with `Resume::park`, parks the
//! request as if its handler had returned `Reply::Park`. A `Resume` dropped without an answer
//! (the work failed in a way it did not report) answers 500, so no request waits past
//! its deadline for nothing. A loop that stopped waiting (deadline, client gone,
//! shutdown) marks the `Resume` cancelled; a late answer is then dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::shared::{Answer, Delivered, Mailbox};
use super::{Park, Response};

pub struct Resume {
    mailbox: Arc<Mailbox>,
    token: u64,
    seq: u64,
    cancelled: Arc<AtomicBool>,
    answered: bool,
}

impl Resume {
    pub(crate) fn new(
        mailbox: Arc<Mailbox>,
        token: u64,
        seq: u64,
        cancelled: Arc<AtomicBool>,
    ) -> Resume {
        Resume {
            mailbox,
            token,
            seq,
            cancelled,
            answered: false,
        }
    }

    /// Whether the request no longer waits for this answer (work not yet started may
    /// be skipped).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Answers the request (dropped if it stopped waiting).
    pub fn answer(mut self, response: Response) {
        self.answered = true;
        self.post(Delivered::Response(response));
    }

    /// Parks the request instead: it now waits for a change (`Reply::Park`'s rules:
    /// checked at once, then on every change, answered by its deadline at the latest).
    pub fn park(mut self, park: Park) {
        self.answered = true;
        self.post(Delivered::Park(park));
    }

    fn post(&self, reply: Delivered) {
        if self.is_cancelled() {
            return;
        }
        self.mailbox.post(Answer {
            token: self.token,
            seq: self.seq,
            reply,
        });
    }
}

impl Drop for Resume {
    fn drop(&mut self) {
        if !self.answered {
            self.post(Delivered::Response(Response::error(500, "internal error")));
        }
    }
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("token", &self.token)
            .field("seq", &self.seq)
            .finish()
    }
}
