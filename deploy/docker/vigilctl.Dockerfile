# syntax=docker/dockerfile:1
# vigilctl for those who build images with Docker (or BuildKit, Buildah):
#   docker build -f deploy/docker/vigilctl.Dockerfile -t ghcr.io/vigilhq/vigilctl:dev .
# `make image` builds the same image without Docker, reproducibly
# (cmd/vigil-image); this file is the equivalent recipe and is not built by
# the project's tests (no Docker Engine on its machines).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The version --version prints: `docker build --build-arg VERSION=$(git describe --tags --always) ...`.
ARG VERSION=dev
# The release flags of `make build`: static, trimmed, without grpc's trace.
RUN CGO_ENABLED=0 go build -trimpath -tags grpcnotrace -ldflags "-X main.version=${VERSION}" -o /out/vigilctl ./cmd/vigilctl \
 && mkdir -p /out/etc /out/tmp /out/var/lib/vigil /out/var/lib/vigil-aggregator /out/home/nonroot \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > /out/etc/passwd \
 && printf 'root:x:0:\nnonroot:x:65532:\n' > /out/etc/group

FROM scratch
COPY --from=build /out/etc/ /etc/
COPY --from=build --chmod=1777 /out/tmp/ /tmp/
COPY --from=build /out/vigilctl /vigilctl
COPY --from=build --chown=65532:65532 --chmod=700 /out/home/nonroot/ /home/nonroot/
USER 65532:65532
ENTRYPOINT ["/vigilctl"]
