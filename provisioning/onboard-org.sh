#!/bin/bash -e
# Onboard an organization: make its secrets, generate its gateway's strongSwan config and its
# FreeRADIUS config, and register its session profile and contracts in the cloud.
#
#   onboard-org.sh ORG_FILE OUT_DIR SPACE...
#
# ORG_FILE  the org's description (JSON: org_id, name, gateway, lan, pool, radius users ...), read
#           by `tenantprint org gateway-config|radius-config|profile`.
# OUT_DIR   private output (mode 0700): secrets.json, gateway/ (for the org's gateway), radius/
#           (for the org's RADIUS server). Re-running keeps the secrets already in OUT_DIR.
# SPACE...  coworking spaces the org gets a contract with.
# With "trust": "cert" in ORG_FILE (issue 18) no secret of the org goes to a device: OUT_DIR also
# holds org-ca/ (the org's CA, made once: keep ca.key with the org's admin) and space-ca.pem (the first
# SPACE's device CA, from the cloud), and the secrets file has no PSK and no RADIUS secret. Without it
# the script runs PSK mode, the weaker one (the org's PSK and RADIUS secret travel to the device).
# The cloud database and KEK come from TP_CLOUD_DB and TP_CLOUD_KEK_FILE, as for `tenantprint cloud`.
# No secret is ever put on a command line: they travel in files under OUT_DIR and through a pipe.
set -o pipefail

tenantprint=${TENANTPRINT:-/opt/tenantprint/venv/bin/tenantprint}
python=${PYTHON:-$(dirname "$tenantprint")/python}

if [[ $# -lt 3 ]]; then
    echo "usage: $0 ORG_FILE OUT_DIR SPACE..." >&2
    exit 2
fi
org_file=$1 out=$2
shift 2

org=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["org_id"])' "$org_file")
name=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("name", ""))' "$org_file")

umask 077
mkdir -p "$out"
chmod 0700 "$out"
trust=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("trust", "psk"))' "$org_file")
certs=()
if [[ $trust == cert ]]; then
    [[ -f "$out/secrets.json" ]] || echo '{}' > "$out/secrets.json"
    [[ -f "$out/org-ca/ca.pem" ]] || "$tenantprint" org ca init --org-id "$org" --out "$out/org-ca" > /dev/null
    "$tenantprint" cloud space ca "$1" > "$out/space-ca.pem"
    certs=(--org-ca "$out/org-ca" --device-ca "$out/space-ca.pem")
elif [[ ! -f "$out/secrets.json" ]]; then
    "$python" -c 'import json,secrets,sys
json.dump({k: secrets.token_urlsafe(32) for k in ("psk", "radius")}, open(sys.argv[1], "x"))' "$out/secrets.json"
fi

"$tenantprint" org gateway-config --org "$org_file" --secrets "$out/secrets.json" --out "$out/gateway" "${certs[@]}"
"$tenantprint" org radius-config --org "$org_file" --secrets "$out/secrets.json" --out "$out/radius" "${certs[@]}"

if ! "$tenantprint" cloud org show "$org" > /dev/null 2>&1; then
    "$tenantprint" cloud org add "$org" --name "${name:-$org}"
fi
"$tenantprint" org profile --org "$org_file" --secrets "$out/secrets.json" "${certs[@]}" |
    "$tenantprint" cloud org set-profile "$org" -
for space in "$@"; do
    contracts=$("$tenantprint" cloud contract list --org "$org" --space "$space" --json)
    if [[ $contracts != *'"active"'* ]]; then
        "$tenantprint" cloud contract add --org "$org" --space "$space"
    fi
done

echo "org $org onboarded. Next: copy $out/gateway to the org's gateway and $out/radius to its"
echo "RADIUS server (both hold secrets: scp, then delete them here or keep $out offline)."
