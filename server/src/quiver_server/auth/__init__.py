"""Access control shared by both servers (docs/security.md).

Transport-neutral parts: `principal` (who calls, the call's access state),
`authenticator` with its sources (`oidc`, `static`, `mtls`), `policy` (what a
principal may do), `access` (the checks servicers and the Flight server call
where they resolve a request), `audit` (the audit log), `tls` (certificates
that follow their files). The gRPC edge is `grpc_interceptor`; the Flight edge
lives in `quiver_flight.auth`.
"""
