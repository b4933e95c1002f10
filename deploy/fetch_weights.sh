#!/bin/sh
# fetch_weights.sh URL SHA256 DEST: download a public weight file and check its checksum.
# An empty SHA256 downloads without a check but prints the digest, so it can be pinned next time.
set -eu
url=$1 expected=$2 dest=$3
curl -fsSL --retry 3 -o "$dest" "$url"
actual=$(sha256sum "$dest" | cut -d' ' -f1)
if [ -n "$expected" ] && [ "$actual" != "$expected" ]; then
  echo "checksum mismatch for $url: expected $expected, got $actual" >&2
  exit 1
fi
echo "fetched $url sha256=$actual"
