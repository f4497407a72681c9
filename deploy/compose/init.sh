#!/bin/sh
# One-shot set-up for docker-compose.yml, run as root by the `init` service before the coordinator starts.
# Makes, once, into the `secrets` volume: a private CA, the coordinator's TLS certificate (for the names
# `coordinator` and `localhost`), and API keys for the workers (work), the producer (submit,read,payloads)
# and an operator (admin). Run again, it keeps what exists; a key file that is missing is made anew (the old key
# of that name is revoked first). Nothing here is checked in: the files live only in the volume.
set -eu
umask 077
cd /secrets

if [ ! -f ca.crt ] || [ ! -f coordinator.crt ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
        -subj "/CN=faultline compose CA" -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=coordinator" -keyout coordinator.key -out coordinator.csr 2>/dev/null
    printf 'subjectAltName=DNS:coordinator,DNS:localhost,IP:127.0.0.1\n' > coordinator.ext
    openssl x509 -req -in coordinator.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
        -extfile coordinator.ext -out coordinator.crt 2>/dev/null
    rm -f coordinator.csr coordinator.ext
    echo "init: made a CA and the coordinator's certificate"
fi

faultline migrate
for spec in worker:work producer:submit,read,payloads admin:admin; do
    name="${spec%%:*}"
    scope="${spec#*:}"
    if [ ! -s "$name.key" ]; then
        faultline keys revoke "compose-$name" >/dev/null 2>&1 || true
        faultline keys create "compose-$name" --scope "$scope" > "$name.key"
    fi
done

# Every service runs as the image's `faultline` user; the CA's key never leaves this volume.
chown -R faultline /secrets
chmod 0600 /secrets/*.key
chmod 0644 /secrets/ca.crt /secrets/coordinator.crt
echo "init: secrets ready (docker compose exec coordinator cat /secrets/admin.key for the operator key)"
