# Build and run mythos-broker (used by docker-compose.yml).
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin mythos-broker

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/mythos-broker /usr/local/bin/mythos-broker
EXPOSE 54731
ENTRYPOINT ["mythos-broker"]
