"""The gateway (Serve application ``gateway``): auth, rate limits, request ids,
uniform errors, and forwarding to the service applications through handles."""
