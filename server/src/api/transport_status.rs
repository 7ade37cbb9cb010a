//! Statuses that tonic makes itself, before any handler runs, restated in
//! the API's terms: an undecodable request is `INVALID_ARGUMENT` naming the
//! field (tonic says `INTERNAL`), a request over the message limit is
//! `RESOURCE_EXHAUSTED` (tonic says `OUT_OF_RANGE`), and both carry
//! `x-grant-error` like every other error of the API (docs/api.md).
//!
//! tonic answers such a call with a trailers-only response and leaves the
//! [`Status`] it made in the response's extensions; a handler's own error
//! already carries `x-grant-error` and passes through unchanged.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use grant_proto::ERROR_CODE_KEY;
use tonic::codegen::http;
use tonic::{Code, Status};

use super::errors::ApiError;

/// The prefix of every prost decode error's text.
const DECODE_PREFIX: &str = "failed to decode Protobuf message: ";

/// The API's form of a status tonic made, or None when it is not one.
pub fn restate(status: &Status) -> Option<ApiError> {
    if status.metadata().contains_key(ERROR_CODE_KEY) {
        return None;
    }
    match status.code() {
        Code::Internal => {
            let rest = status.message().strip_prefix(DECODE_PREFIX)?;
            // prost names the path to the bad field first, one
            // "Message.field: " per level from the innermost out, then what
            // was wrong.
            let mut fields = Vec::new();
            let mut what = rest;
            while let Some((head, tail)) = what.split_once(": ") {
                let Some((_, field)) = head.split_once('.') else {
                    break;
                };
                if head.contains(' ') {
                    break;
                }
                fields.push(field);
                what = tail;
            }
            fields.reverse();
            let message = if fields.is_empty() {
                format!("the request is not a valid protobuf message: {what}")
            } else {
                format!("{}: {what}", fields.join("."))
            };
            Some(ApiError::invalid("request", message))
        }
        Code::OutOfRange if status.message().contains("message length too large") => {
            Some(ApiError::ResourceExhausted(format!(
                "the message is over the size limit: {}",
                status.message()
            )))
        }
        _ => None,
    }
}

/// The tower layer restating tonic's own statuses on the API listener.
#[derive(Clone, Default)]
pub struct TransportStatusLayer;

impl<S> tower::Layer<S> for TransportStatusLayer {
    type Service = TransportStatus<S>;
    fn layer(&self, inner: S) -> TransportStatus<S> {
        TransportStatus { inner }
    }
}

#[derive(Clone)]
pub struct TransportStatus<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for TransportStatus<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let restated = resp.extensions().get::<Status>().and_then(restate);
            Ok(match restated {
                Some(e) => Status::from(e).into_http(),
                None => resp,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decode_error_names_the_field() {
        let s = Status::internal(
            "failed to decode Protobuf message: IssueRequest.intent: invalid string value: data is not UTF-8 encoded",
        );
        let e = restate(&s).unwrap();
        assert_eq!(e.code(), "invalid_argument");
        assert_eq!(
            e.to_string(),
            "invalid request: intent: invalid string value: data is not UTF-8 encoded"
        );
        let nested = Status::internal(
            "failed to decode Protobuf message: Scope.resource: IssueRequest.scopes: invalid string value: data is not UTF-8 encoded",
        );
        assert_eq!(
            restate(&nested).unwrap().to_string(),
            "invalid request: scopes.resource: invalid string value: data is not UTF-8 encoded"
        );
        let garbage =
            Status::internal("failed to decode Protobuf message: invalid wire type value: 7");
        assert_eq!(
            restate(&garbage).unwrap().to_string(),
            "invalid request: the request is not a valid protobuf message: invalid wire type value: 7"
        );
    }

    #[test]
    fn over_the_limit_is_resource_exhausted_and_handler_errors_pass() {
        let s = Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        assert_eq!(restate(&s).unwrap().code(), "resource_exhausted");
        let ours: Status = ApiError::Internal("disk".into()).into();
        assert!(restate(&ours).is_none());
        assert!(restate(&Status::internal("something else")).is_none());
    }
}
