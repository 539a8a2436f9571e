#!/usr/bin/env bash
# A throwaway Kerberos realm (TEST.DASK) for the tests: a KDC on 127.0.0.1:$KDC_PORT, the
# gateway's service principal HTTP/127.0.0.1 in a keytab, and users alice and bob (password
# "pw-<name>"). Prints `export ...` lines that point Kerberos clients at it.
set -euo pipefail
KDC_DIR=${KDC_DIR:-/tmp/dask-gateway-test-kdc}
KDC_PORT=${KDC_PORT:-28088}
REALM=TEST.DASK
if [ ! -x /usr/sbin/krb5kdc ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        krb5-kdc krb5-admin-server krb5-user libkrb5-dev >/dev/null
fi
KDC_DIR=$KDC_DIR bash "$(dirname "$0")/stop-kdc.sh"
mkdir -p "$KDC_DIR"
cat > "$KDC_DIR/krb5.conf" <<CONF
[libdefaults]
    default_realm = $REALM
    dns_lookup_realm = false
    dns_lookup_kdc = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
[realms]
    $REALM = {
        kdc = 127.0.0.1:$KDC_PORT
    }
[domain_realm]
    127.0.0.1 = $REALM
CONF
cat > "$KDC_DIR/kdc.conf" <<CONF
[kdcdefaults]
    kdc_ports = $KDC_PORT
    kdc_tcp_ports = $KDC_PORT
[realms]
    $REALM = {
        database_name = $KDC_DIR/principal
        key_stash_file = $KDC_DIR/stash
        acl_file = $KDC_DIR/kadm5.acl
        supported_enctypes = aes256-cts-hmac-sha1-96:normal
    }
CONF
: > "$KDC_DIR/kadm5.acl"
export KRB5_CONFIG=$KDC_DIR/krb5.conf KRB5_KDC_PROFILE=$KDC_DIR/kdc.conf
kdb5_util create -s -r "$REALM" -P "master-$RANDOM$RANDOM" >/dev/null 2>&1
for user in alice bob; do
    kadmin.local -q "addprinc -pw pw-$user $user" >/dev/null 2>&1
done
kadmin.local -q "addprinc -randkey HTTP/127.0.0.1" >/dev/null 2>&1
kadmin.local -q "ktadd -k $KDC_DIR/http.keytab HTTP/127.0.0.1" >/dev/null
krb5kdc -P "$KDC_DIR/kdc.pid"
for _ in $(seq 50); do [ -s "$KDC_DIR/kdc.pid" ] && break; sleep 0.1; done
echo "export KRB5_CONFIG=$KDC_DIR/krb5.conf TEST_KDC_DIR=$KDC_DIR TEST_KEYTAB=$KDC_DIR/http.keytab"
