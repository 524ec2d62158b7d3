# Build and run mythos-broker (used by docker-compose.yml). The image also
# carries the demo world (the example examples/demo, as `mythos-demo`), which
# the compose file's `demo` profile runs.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin mythos-broker --example demo

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/mythos-broker /usr/local/bin/mythos-broker
COPY --from=build /src/target/release/examples/demo /usr/local/bin/mythos-demo
EXPOSE 54731
ENTRYPOINT ["mythos-broker"]
