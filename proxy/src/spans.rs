//! OpenTelemetry spans (`--otlp-endpoint`): `request` for each request on the main listener,
//! with `verify` and `forward` inside it, and `sync.apply` for each snapshot or event batch
//! the replica applies.
//!
//! Spans are `tracing` spans of target [`TARGET`]; the binary exports them with
//! `tracing-opentelemetry` and keeps them out of the log lines. Request spans are made only when
//! `ProxyConfig::spans` is set, and the handler is generic over [`RequestSpans`]: with
//! [`Untraced`] (spans off, `TRACED = false`) it awaits its futures in place and never touches
//! the forwarder's inputs, so the request path is the code it was before spans existed (+0.7 %
//! instructions, at the edge of run-to-run noise; BENCHMARKS.md). Two earlier shapes cost every
//! request ~1,500 instructions (of ~38,500), traced or not: the `traceparent` carried to the
//! forwarder in `Forwarding` (a 16-byte-aligned field and a branch there changed how the
//! forwarder's multi-kilobyte future was laid out and inlined; now the handler sets the header
//! on the traced path only), and wrapping the futures, even in a call that hands them back.
//! Sync spans are made whenever a subscriber enables the target, which the binary does only
//! when it exports; sync work is not on the request path.
//!
//! A request span continues the caller's trace when the request has one valid `traceparent`
//! (the caller's span is its remote parent, and the caller's `sampled` flag is the sampler's
//! input), and otherwise starts one. The upstream's `traceparent` names the `forward` span, so
//! the upstream's spans are children of the gateway's hop; spans therefore imply
//! `trace_context` (the handler sets the header, and the forwarder's own trace context is off).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, Method, Response};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Instrument;
use tracing::Span;
use tracing::field::Empty;
use tracing::instrument::Instrumented;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::response::ProxyBody;
use crate::trace_context::{self, SAMPLED, TraceParent};
use crate::verify::Verdict;

/// The target of every span the gateway makes for export.
pub const TARGET: &str = "keygate::spans";

/// The span of one request, continuing the caller's trace when it sent a valid `traceparent`.
pub(crate) fn request(method: &Method, path: &str, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.kind = "server",
        http.request.method = %method,
        url.path = path,
        http.response.status_code = Empty,
        keygate.request_id = Empty,
    );
    if let Some(parent) = trace_context::incoming(headers) {
        // Fails only without an OpenTelemetry layer, when nothing is exported anyway.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(
            SpanContext::new(
                TraceId::from_bytes(parent.trace_id.to_be_bytes()),
                SpanId::from_bytes(parent.parent_id.to_be_bytes()),
                TraceFlags::new(parent.flags & SAMPLED),
                true,
                TraceState::NONE,
            ),
        ));
    }
    span
}

/// What the handler records about one request: nothing ([`Untraced`]) or spans ([`Traced`]).
/// Plain associated types rather than `impl Future` returns, so that the untraced types are
/// exactly the futures given and the handler's future stays `Send` without further bounds.
pub(crate) trait RequestSpans {
    /// Whether anything is recorded: the handler tests this constant and, when it is false,
    /// awaits its futures in place, exactly as it did before spans existed.
    const TRACED: bool;

    /// The verification, perhaps inside a `verify` span.
    type Verify<F: Future<Output = Verdict>>: Future<Output = Verdict>;
    /// The span of the call to the upstream, if any.
    type ForwardSpan;
    /// The call to the upstream, perhaps inside its span.
    type Forward<F: Future<Output = Response<ProxyBody>>>: Future<Output = Response<ProxyBody>>;

    fn verify<F: Future<Output = Verdict>>(&self, verifying: F) -> Self::Verify<F>;
    fn forward_span(&self, upstream: &str) -> Self::ForwardSpan;
    /// The `traceparent` that names the forward span to the upstream.
    fn hop(span: &Self::ForwardSpan) -> Option<TraceParent>;
    fn forward<F: Future<Output = Response<ProxyBody>>>(
        span: Self::ForwardSpan,
        forwarding: F,
    ) -> Self::Forward<F>;
}

/// Spans off: every call hands back what it was given.
pub(crate) struct Untraced;

impl RequestSpans for Untraced {
    const TRACED: bool = false;

    type Verify<F: Future<Output = Verdict>> = F;
    type ForwardSpan = ();
    type Forward<F: Future<Output = Response<ProxyBody>>> = F;

    #[inline(always)]
    fn verify<F: Future<Output = Verdict>>(&self, verifying: F) -> F {
        verifying
    }

    #[inline(always)]
    fn forward_span(&self, _upstream: &str) {}

    #[inline(always)]
    fn hop((): &()) -> Option<TraceParent> {
        None
    }

    #[inline(always)]
    fn forward<F: Future<Output = Response<ProxyBody>>>((): (), forwarding: F) -> F {
        forwarding
    }
}

/// Spans on: `verify` and `forward` are children of the request's span.
pub(crate) struct Traced(pub Span);

impl RequestSpans for Traced {
    const TRACED: bool = true;

    type Verify<F: Future<Output = Verdict>> = Recorded<F>;
    type ForwardSpan = Span;
    type Forward<F: Future<Output = Response<ProxyBody>>> = Recorded<F>;

    fn verify<F: Future<Output = Verdict>>(&self, verifying: F) -> Recorded<F> {
        let span =
            tracing::info_span!(target: TARGET, parent: &self.0, "verify", keygate.code = Empty);
        Recorded::new(verifying, span)
    }

    fn forward_span(&self, upstream: &str) -> Span {
        tracing::info_span!(
            target: TARGET,
            parent: &self.0,
            "forward",
            otel.kind = "client",
            server.address = upstream,
            http.response.status_code = Empty,
        )
    }

    fn hop(span: &Span) -> Option<TraceParent> {
        hop(span)
    }

    fn forward<F: Future<Output = Response<ProxyBody>>>(span: Span, forwarding: F) -> Recorded<F> {
        Recorded::new(forwarding, span)
    }
}

/// What a finished span records of its future's output.
pub(crate) trait Outcome {
    fn record(&self, span: &Span);
}

impl Outcome for Verdict {
    fn record(&self, span: &Span) {
        if let Verdict::Denied(code) = self {
            span.record("keygate.code", code.as_str());
        }
    }
}

impl Outcome for Response<ProxyBody> {
    fn record(&self, span: &Span) {
        record_status(span, self.status());
    }
}

pin_project_lite::pin_project! {
    /// A future run inside `span`, whose output is recorded on it.
    pub(crate) struct Recorded<F> {
        #[pin]
        inner: Instrumented<F>,
    }
}

impl<F: Future> Recorded<F> {
    fn new(inner: F, span: Span) -> Self {
        Self {
            inner: inner.instrument(span),
        }
    }
}

impl<F> Future for Recorded<F>
where
    F: Future,
    F::Output: Outcome,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<F::Output> {
        let mut inner = self.project().inner;
        let output = std::task::ready!(inner.as_mut().poll(context));
        // The span closes when this future is dropped, after the output is on it.
        output.record(inner.as_ref().get_ref().span());
        Poll::Ready(output)
    }
}

/// The `traceparent` that names `span` to the next hop; `None` when `span` is none or was not
/// made by an OpenTelemetry layer.
fn hop(span: &Span) -> Option<TraceParent> {
    if span.is_none() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| TraceParent {
        trace_id: u128::from_be_bytes(span_context.trace_id().to_bytes()),
        parent_id: u64::from_be_bytes(span_context.span_id().to_bytes()),
        flags: span_context.trace_flags().to_u8() & SAMPLED,
    })
}

/// Records the answer's status on a `request` or `forward` span (nothing when it is none).
pub(crate) fn record_status(span: &Span, status: http::StatusCode) {
    if !span.is_none() {
        span.record("http.response.status_code", status.as_u16());
    }
}

/// The span of one applied snapshot or event batch: `what` (`snapshot`, `events`), the revision
/// reached and how many items.
pub(crate) fn sync_apply(what: &'static str, revision: u64, items: usize) -> Span {
    tracing::info_span!(
        target: TARGET,
        "sync.apply",
        keygate.sync.kind = what,
        keygate.revision = revision,
        keygate.items = items,
    )
}
