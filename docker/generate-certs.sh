#!/usr/bin/env bash
# TLS certificates and SuperNode authentication keys for an SFDD federation.
#
#   docker/generate-certs.sh [-o OUT_DIR] [-H SUPERLINK_HOST]... [NODE_NAME...]
#
# OUT_DIR (default: docker/certs) receives one folder per party:
#   ca/ca.crt, ca/ca.key       the certificate authority; ca.key never leaves the coordinator,
#                              ca.crt goes to everyone (flwr CLI, SuperNodes, SuperExecs)
#   superlink/                 ca.crt, server.pem + server.key (TLS certificate valid for
#                              localhost, 127.0.0.1, ::1, superlink and every -H host) and
#                              superexec-secret (shared with the ServerApp SuperExec)
#   NODE_NAME/                 ca.crt, supernode.key + supernode.key.pub (ECDSA P-384, OpenSSH
#                              format: register the .pub with `flwr supernode register`) and
#                              superexec-secret (shared with that node's ClientApp SuperExec)
# NODE_NAME defaults to hospital-a hospital-b hospital-c. Existing files are kept: run it
# again with a new name to add a hospital signed by the same CA; delete superlink/ to
# re-issue the SuperLink certificate for other hosts. Needs openssl and ssh-keygen.
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

out="$(cd "$(dirname "$0")" && pwd)/certs"
hosts=(localhost 127.0.0.1 ::1 superlink)
nodes=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -o|--out) out="$2"; shift 2 ;;
    -H|--host) hosts+=("$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "generate-certs.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) nodes+=("$1"); shift ;;
  esac
done
if [[ ${#nodes[@]} -eq 0 ]]; then
  nodes=(hospital-a hospital-b hospital-c)
fi
for tool in openssl ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "generate-certs.sh needs $tool" >&2; exit 1; }
done
for name in "${nodes[@]}"; do
  if [[ ! "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || [[ "$name" == ca || "$name" == superlink ]]; then
    echo "generate-certs.sh: '$name' is not a usable node name (letters, digits, . _ -; not ca or superlink)" >&2
    exit 2
  fi
done

umask 077
mkdir -p "$out/ca" "$out/superlink"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

secret() {  # a random shared secret, read by Flower as raw bytes
  [[ -f "$1" ]] || openssl rand -hex 32 | tr -d '\n' > "$1"
}

if [[ ! -f "$out/ca/ca.key" ]]; then
  cat > "$work/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = SFDD federation CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
  openssl req -x509 -config "$work/ca.cnf" -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes \
    -sha384 -days 825 -keyout "$out/ca/ca.key" -out "$out/ca/ca.crt" 2>/dev/null
  chmod 644 "$out/ca/ca.crt"
  echo "created the CA: $out/ca/ca.crt"
fi

if [[ ! -f "$out/superlink/server.pem" ]]; then
  san=""
  for host in "${hosts[@]}"; do
    if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then san+="IP:$host,"; else san+="DNS:$host,"; fi
  done
  cat > "$work/server.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = ${san%,}
EOF
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -subj "/CN=SFDD SuperLink" \
    -keyout "$out/superlink/server.key" -out "$work/server.csr" 2>/dev/null
  openssl x509 -req -in "$work/server.csr" -CA "$out/ca/ca.crt" -CAkey "$out/ca/ca.key" \
    -CAserial "$out/ca/ca.srl" -CAcreateserial -days 825 -sha384 -extfile "$work/server.ext" \
    -out "$out/superlink/server.pem" 2>/dev/null
  chmod 644 "$out/superlink/server.pem"
  echo "created the SuperLink certificate for ${hosts[*]}: $out/superlink/server.pem"
fi
cp "$out/ca/ca.crt" "$out/superlink/ca.crt"
secret "$out/superlink/superexec-secret"

for name in "${nodes[@]}"; do
  mkdir -p "$out/$name"
  cp "$out/ca/ca.crt" "$out/$name/ca.crt"
  if [[ ! -f "$out/$name/supernode.key" ]]; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "$name" -f "$out/$name/supernode.key"
    echo "created the SuperNode key of $name: register $out/$name/supernode.key.pub"
  fi
  secret "$out/$name/superexec-secret"
done
chmod 644 "$out"/*/ca.crt "$out"/*/supernode.key.pub 2>/dev/null || true
chmod 755 "$out" "$out"/*/
echo "done: $out (for the Docker images, which run as uid 49999: sudo chown -R 49999:49999 $out/superlink ${nodes[*]/#/$out/})"
