#!/bin/bash -e
# In the image's chroot (build-image), last (after any layer): what a read-only root needs.
# systemd runs ldconfig, hwdb and catalog updates at boot when /usr is newer than /etc/.updated
# (ConditionNeedsUpdate=): on a read-only root they would fail every boot. The image is up to date.
# Only ever in the image's root, started by build-image (which sets TP_IMAGE_BUILD and stages the
# same token in /var/tmp/tp-hooks/IMAGE-ROOT): on the build machine these lines would wreck it.
if [[ -z ${TP_IMAGE_BUILD:-} || "$(cat /var/tmp/tp-hooks/IMAGE-ROOT 2>/dev/null)" != "$TP_IMAGE_BUILD" ]]; then
    echo "${0##*/}: not started by build-image in the image's root: refusing" >&2
    exit 1
fi
ldconfig
systemd-hwdb update 2>/dev/null || true
journalctl --update-catalog 2>/dev/null || true
for d in /etc /var; do
    printf 'TIMESTAMP_NSEC=%s\n' "$(date +%s%N)" > "$d/.updated"
    touch -r /usr "$d/.updated" 2>/dev/null || true
    touch "$d/.updated"
done
rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/*.log /var/log/apt/* /root/.cache /tmp/* /var/tmp/*
