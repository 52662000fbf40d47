"""Access: who is calling, may they, and how much; one module per concern.

``hook`` (the serving layer's door hook: every REST and gRPC call passes it before any work),
``door`` (the access mechanism as that door), ``asgi`` (the same check as ASGI middleware, for the
retrain service and the dashboard), ``doorstep`` (refusals before any access work: oversized bodies,
cross-site requests), ``admission`` (the framework-neutral check: credentials, permission, rate
limit, bulkhead), ``auth_file`` (tiers and identities), ``oidc`` (bearer tokens), ``ratelimit``
(windows per identity, memory or Redis), ``audit`` (one line per request, counters), ``settings``
(the access flags and their ``STORECAST_*`` variables), ``key_file`` (a service's own key, from a
variable or a mounted Secret).
"""
