# The gateway: the official Envoy 1.40 image running the same gateway config as `make serve`,
# rendered for containers into gateway/envoy.container.yaml (`make docker-config`), with the
# access log on stdout. See docker/README.md.
#
#   docker build -f docker/envoy.Dockerfile -t llm-gateway .      (or `docker compose build`)
#
# The base is a build argument so another registry, a mirror or a stand-in can be used; the
# base must provide /usr/local/bin/envoy, bash, coreutils and setpriv (no Python needed).
ARG ENVOY_IMAGE=envoyproxy/envoy:v1.40.0
FROM ${ENVOY_IMAGE}

COPY gateway/envoy.container.yaml /etc/envoy/envoy.yaml
COPY gateway/generate_parameters.lua /etc/envoy/generate_parameters.lua
COPY docker/envoy-entrypoint.sh /usr/local/bin/llm-gateway

# The key volume's mount point (read-only here; written by the key tool in the Triton image).
# Owned by uid 1000, the user Envoy runs as, so a fresh volume starts that way.
RUN mkdir -p /var/lib/llm/keys/envoy \
    && chown -R 1000:1000 /var/lib/llm \
    && chmod 0700 /var/lib/llm/keys

EXPOSE 8080 9902
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/llm-gateway", "health"]
# Starts as root to hand stdout to uid 1000, then drops to it (see the entrypoint).
ENTRYPOINT ["/usr/local/bin/llm-gateway"]
CMD ["serve"]
