#!/bin/sh
# fetch_weights.sh URL SHA256 DEST: download a public weight file and check its sha256.
# A mismatch fails (exit 1) and leaves nothing at DEST. An empty SHA256 downloads without a check
# but prints the digest, so it can be pinned with --build-arg next time.
set -eu
if [ "$#" -ne 3 ]; then
  echo "usage: $0 URL SHA256 DEST" >&2
  exit 2
fi
url=$1 expected=$2 dest=$3
partial="$dest.part"
trap 'rm -f "$partial"' EXIT
curl -fsSL --retry 3 -o "$partial" "$url"
actual=$(sha256sum "$partial" | cut -d' ' -f1)
if [ -n "$expected" ] && [ "$actual" != "$expected" ]; then
  echo "checksum mismatch for $url: expected $expected, got $actual" >&2
  exit 1
fi
mv "$partial" "$dest"
if [ -z "$expected" ]; then
  echo "WARNING: $url was not verified (no sha256 given); pin it with sha256=$actual" >&2
fi
echo "fetched $url -> $dest sha256=$actual"
