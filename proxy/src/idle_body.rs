//! A body that fails when its source sends nothing for too long: a client trickling (or never
//! sending) the request body it announced, an upstream stalling mid-response. Without it
//! either would hold a connection, and an upstream slot, for ever.
//!
//! The timer exists only once the body has had to wait: a body that is ready whenever it is
//! polled (every small request and response) costs no timer and no clock read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// `inner`, failing with [`IdleBodyError::Idle`] after `idle` without a frame.
#[derive(Debug)]
pub(crate) struct IdleBody<B> {
    inner: B,
    idle: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: None,
        }
    }

    /// The source.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The source.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

/// Why an [`IdleBody`] ended early.
#[derive(Debug, thiserror::Error)]
pub enum IdleBodyError<E> {
    /// The source failed.
    #[error(transparent)]
    Inner(E),
    /// The source sent nothing for this long.
    #[error("no body data for {0:?}")]
    Idle(Duration),
}

impl<B> Body for IdleBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = IdleBodyError<B::Error>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(deadline) = &mut this.deadline {
                    deadline.as_mut().reset(Instant::now() + this.idle);
                }
                Poll::Ready(frame.map(|frame| frame.map_err(IdleBodyError::Inner)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(IdleBodyError::Idle(idle))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_sending_fails_after_the_idle_time() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut body = IdleBody::new(StreamBody::new(stream), Duration::from_secs(30));
        tx.send(Ok(Frame::data(Bytes::from("a"))))
            .await
            .expect("send");
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from("a")));

        // 29 s of silence, then data: the clock restarts.
        let sender = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(29)).await;
            let _ = sender.send(Ok(Frame::data(Bytes::from("b")))).await;
        });
        assert!(body.frame().await.expect("a frame").is_ok());
        // Then nothing: fails 30 s later.
        let started = Instant::now();
        let error = body.frame().await.expect("an error").expect_err("idle");
        assert!(matches!(error, IdleBodyError::Idle(_)));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        drop(tx);
    }
}
