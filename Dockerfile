# The ledger image: one static-ish binary on a slim base. Built by docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ledger-cli

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /data ledger && mkdir -p /data && chown ledger /data
COPY --from=build /src/target/release/ledger /usr/local/bin/ledger
USER ledger
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["ledger"]
CMD ["serve", "--data", "/data", "--listen", "0.0.0.0:8080"]
