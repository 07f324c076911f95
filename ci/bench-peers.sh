# shellcheck shell=bash disable=SC2154,SC2034
# GlusterFS (replica 3) and MooseFS (goal 3) as targets of ci/bench-fs, which sources this file
# and provides $work, say and die. Each peer runs on this machine in a network namespace of its
# own, made fresh for every round: both refuse loopback addresses (the GlusterFS CLI rejects
# 127.0.0.0/8 bricks; a MooseFS chunkserver refuses to reach its master on 127.x), so the namespace
# has `lo` plus a veth pair with BOTH ends inside it and $peer_addr on one end. It has no route
# to anything outside: every daemon, mount and admin tool is started with
# `nsenter --net=/run/netns/NAME`, which switches only the network namespace, so the FUSE mounts
# stay visible to the benchmark outside it (`ip netns exec` would also unshare the mount
# namespace and hide them). Storage lives under $work on the local disk. Tear-down is by PID:
# every process inside the namespace (`ip netns pids`), then the namespace itself.
#
# The packages' own init scripts must not start daemons outside the namespace while installing:
# peers_prepare holds them off with policy-rc.d for the duration of apt-get.

peer_targets=(glusterfs moosefs)
# Only ever inside the benchmark's own namespaces, which have no route out.
peer_addr=10.199.0.1
peer_timeout=60 # seconds, for every admin command and mount

declare -A peer_problem=() # target -> why it cannot be measured (any more)
peer_policy_made=0
peer_gluster_state=() # glusterd's hard-coded state paths that did not exist before we ran it

is_peer() { case $1 in glusterfs | moosefs) return 0 ;; *) return 1 ;; esac; }

peer_label() {
  case $1 in
    glusterfs) echo "GlusterFS r3" ;;
    moosefs) echo "MooseFS goal 3" ;;
    *) echo "$1" ;;
  esac
}

peer_packages() {
  case $1 in
    glusterfs) echo glusterfs-server glusterfs-client ;;
    moosefs) echo moosefs-master moosefs-chunkserver moosefs-client ;;
  esac
}

peer_commands() {
  case $1 in
    glusterfs) echo glusterd gluster glusterfs mount.glusterfs ;;
    moosefs) echo mfsmaster mfschunkserver mfsmount mfssetgoal mfsgetgoal mfscheckfile mfssettrashtime ;;
  esac
}

peer_ns() { echo "votefs-bench-$$-$1"; } # $$ is the script's pid, in subshells too
peer_dir() { echo "$work/$1"; }
peer_mnt() { echo "$work/$1-mnt"; }
# nsx TARGET CMD...: run CMD in the target's network namespace (and nothing else unshared).
nsx() {
  local ns
  ns=$(peer_ns "$1")
  shift
  nsenter --net="/run/netns/$ns" "$@"
}

peer_version() {
  case $1 in
    glusterfs) glusterfs --version 2>/dev/null | head -1 ;;
    moosefs) echo "MooseFS $(mfsmaster -v 2>/dev/null | sed -n 's/^version: \([^ ]*\).*/\1/p')" ;;
  esac
}

# peers_prepare TARGET...: install what is missing; a peer that still lacks a tool gets a
# peer_problem entry and is skipped by ci/bench-fs.
peers_prepare() {
  local t c pkgs=() status=0 p
  for t in "$@"; do
    for c in $(peer_commands "$t"); do
      if ! command -v "$c" >/dev/null 2>&1; then
        read -ra p <<<"$(peer_packages "$t")"
        pkgs+=("${p[@]}")
        break
      fi
    done
  done
  if ! command -v ip >/dev/null 2>&1; then pkgs+=(iproute2); fi
  if ! command -v nsenter >/dev/null 2>&1; then pkgs+=(util-linux); fi
  if [ ${#pkgs[@]} -gt 0 ]; then
    say "installing ${pkgs[*]} for the peers"
    # Keep the packages' init scripts from starting glusterd, mfsmaster or mfschunkserver in
    # this machine's own network namespace (a policy-rc.d that already exists is left as it is).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\n# made by votefs ci/bench-fs while installing its peers; removed afterwards\nexit 101\n' \
        >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      peer_policy_made=1
    fi
    apt-get update -qq || status=$?
    if [ "$status" = 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >"$work/apt-peers.log" 2>&1 || status=$?
      [ "$status" = 0 ] || tail -20 "$work/apt-peers.log" >&2
    fi
    peer_remove_policy
  fi
  for t in "$@"; do
    if ! command -v ip >/dev/null 2>&1 || ! command -v nsenter >/dev/null 2>&1; then
      peer_problem[$t]="needs ip (iproute2) and nsenter (util-linux), and installing them failed"
      continue
    fi
    for c in $(peer_commands "$t"); do
      if ! command -v "$c" >/dev/null 2>&1; then
        if [ "$status" != 0 ]; then
          peer_problem[$t]="not installed: apt-get install $(peer_packages "$t") failed (status $status)"
        else
          peer_problem[$t]="\`$c\` is missing even after installing $(peer_packages "$t")"
        fi
        break
      fi
    done
  done
  for p in /var/lib/glusterd/geo-replication /var/lib/glusterd/ss_brick /var/run/gluster/snaps; do
    [ -e "$p" ] || peer_gluster_state+=("$p")
  done
}

peer_remove_policy() {
  if [ "$peer_policy_made" = 1 ]; then
    rm -f /usr/sbin/policy-rc.d
    peer_policy_made=0
  fi
}

# The namespace: lo, and a veth pair with both ends inside it and $peer_addr/24 on one end.
peer_net_up() {
  local ns out
  ns=$(peer_ns "$1")
  out=$(ip netns add "$ns" 2>&1) || die "could not create network namespace $ns: $out"
  ip -n "$ns" link set lo up
  out=$(ip -n "$ns" link add veth0 type veth peer name veth1 2>&1) ||
    die "could not create a veth pair inside namespace $ns: $out"
  ip -n "$ns" addr add "$peer_addr/24" dev veth0
  ip -n "$ns" link set veth0 up
  ip -n "$ns" link set veth1 up
}

# wait_for SECONDS WHAT LOG CMD...: poll CMD every 0.2 s; if it never succeeds, die naming WHAT
# and quoting the last lines of LOG ("-" for none).
wait_for() {
  local secs=$1 what=$2 log=$3 deadline
  shift 3
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      [ "$log" = - ] || what="$what; $(log_gist "$log")"
      die "$what (waited ${secs} s)"
    fi
    sleep 0.2
  done
}

alive() { kill -0 "$1" 2>/dev/null; }

# up_and PID NAME LOG CMD...: die at once if PID has exited, else run CMD (a wait_for predicate).
up_and() {
  alive "$1" || die "$2 exited; $(log_gist "$3")"
  shift 3
  "$@"
}

# log_gist LOG: the log's first error-looking lines, or else its last lines, on one line.
log_gist() {
  local gist
  gist=$(grep -Eim2 "error|fail|can't|cannot|refus|denied|invalid" "$1" 2>/dev/null | tr '\n' ' ')
  if [ -n "$gist" ]; then
    echo "$(basename "$1") says: $gist"
  else
    echo "last lines of $(basename "$1"): $(tail -n 3 "$1" 2>/dev/null | tr '\n' ' ')"
  fi
}

# --- GlusterFS ---------------------------------------------------------------------------------
# One glusterd (its own working directory, run directory, socket and log directory, so nothing
# is shared with a glusterd of the machine or of another run), a volume of three bricks with
# `replica 3` and default options, mounted with `mount -t glusterfs` (the FUSE client).
gl() {
  local d
  d=$(peer_dir glusterfs)
  timeout "$peer_timeout" nsenter --net="/run/netns/$(peer_ns glusterfs)" gluster --mode=script \
    --glusterd-sock="$d/run/glusterd.socket" --log-file="$d/log/cli.log" "$@"
}

gl_bricks_online() {
  gl volume status bench --xml >"$(peer_dir glusterfs)/status.xml" 2>/dev/null || return 1
  python3 - "$(peer_dir glusterfs)/status.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
nodes = ET.parse(sys.argv[1]).getroot().iter("node")
bricks = [n for n in nodes if (n.findtext("path") or "").endswith(("/brick1/b", "/brick2/b", "/brick3/b"))]
sys.exit(0 if len(bricks) == 3 and all(n.findtext("status") == "1" for n in bricks) else 1)
PY
}

gl_in_all_bricks() {
  local d i
  d=$(peer_dir glusterfs)
  for i in 1 2 3; do [ -f "$d/brick$i/b/$1" ] || return 1; done
}

glusterfs_up() {
  local d mnt pid out i bricks=()
  d=$(peer_dir glusterfs)
  mnt=$(peer_mnt glusterfs)
  peer_net_up glusterfs
  mkdir -p "$d/glusterd" "$d/run" "$d/log" "$d/brick1" "$d/brick2" "$d/brick3" "$mnt"
  # The package's glusterd.vol with our own directories and socket.
  [ -r /etc/glusterfs/glusterd.vol ] || die "no /etc/glusterfs/glusterd.vol (glusterfs-server package)"
  sed -e "s|^\([[:space:]]*\)option working-directory .*|\1option working-directory $d/glusterd\\
\1option run-directory $d/run\\
\1option glusterd-sockfile $d/run/glusterd.socket\\
\1option logging-directory $d/log|" /etc/glusterfs/glusterd.vol >"$d/glusterd.vol"
  grep -q "glusterd-sockfile $d/run/glusterd.socket" "$d/glusterd.vol" ||
    die "could not adapt /etc/glusterfs/glusterd.vol (no working-directory line)"
  nsx glusterfs glusterd -N -f "$d/glusterd.vol" -l "$d/log/glusterd.log" -p "$d/run/glusterd.pid" \
    </dev/null >"$d/log/glusterd.out" 2>&1 &
  pid=$!
  wait_for 60 "glusterd did not answer on its socket" "$d/log/glusterd.log" up_and "$pid" glusterd \
    "$d/log/glusterd.log" gl volume list
  for i in 1 2 3; do bricks+=("$peer_addr:$d/brick$i/b"); done
  # `force`: all three bricks are on one server and on the root file system, which gluster
  # refuses without it.
  out=$(gl volume create bench replica 3 "${bricks[@]}" force 2>&1) || die "gluster volume create failed: ${out%%$'\n'*}"
  out=$(gl volume start bench 2>&1) || die "gluster volume start failed: ${out%%$'\n'*}"
  wait_for 60 "the three bricks did not come online" "$d/log/glusterd.log" gl_bricks_online
  out=$(timeout "$peer_timeout" nsenter --net="/run/netns/$(peer_ns glusterfs)" \
    mount -t glusterfs -o log-file="$d/log/mount.log" "$peer_addr:/bench" "$mnt" 2>&1) ||
    die "mount -t glusterfs failed: $out; $(log_gist "$d/log/mount.log")"
  wait_for 30 "the GlusterFS mount did not appear at $mnt" "$d/log/mount.log" mountpoint -q "$mnt"
  # A file written through the mount must reach all three bricks.
  echo probe >"$mnt/probe"
  wait_for 30 "a probe file did not reach all three bricks" "$d/log/mount.log" gl_in_all_bricks probe
  rm -f "$mnt/probe"
}

# --- MooseFS -----------------------------------------------------------------------------------
# One master and three chunkservers (each with its own data directory and port), default
# settings except for paths and running as root; mfsmount with its defaults, and goal 3 set on
# the root directory with mfssetgoal -r (new files inherit it).
mfs_cs_pids=()
mfs_registered() {
  local i d
  d=$(peer_dir moosefs)
  for i in 1 2 3; do
    alive "${mfs_cs_pids[$i]}" || die "mfschunkserver $i exited; $(log_gist "$d/cs$i.log")"
  done
  [ "$(grep -c 'chunkserver register end' "$d/master.log")" -ge 3 ]
}

mfs_probe_has_3_copies() {
  nsx moosefs mfscheckfile "$(peer_mnt moosefs)/probe" | grep -Eq 'chunks with 3 copies:[[:space:]]+1$'
}

moosefs_up() {
  local d mnt pid out i
  d=$(peer_dir moosefs)
  mnt=$(peer_mnt moosefs)
  peer_net_up moosefs
  mkdir -p "$d/master" "$mnt"
  if [ -r /var/lib/mfs/metadata.mfs.empty ]; then
    cp /var/lib/mfs/metadata.mfs.empty "$d/master/metadata.mfs"
  else
    printf 'MFSM NEW' >"$d/master/metadata.mfs"
  fi
  echo '* / rw,alldirs,admin,maproot=0:0' >"$d/mfsexports.cfg"
  : >"$d/mfstopology.cfg"
  cat >"$d/mfsmaster.cfg" <<EOF
WORKING_USER = root
WORKING_GROUP = root
DATA_PATH = $d/master
EXPORTS_FILENAME = $d/mfsexports.cfg
TOPOLOGY_FILENAME = $d/mfstopology.cfg
EOF
  nsx moosefs mfsmaster -f -c "$d/mfsmaster.cfg" </dev/null >"$d/master.log" 2>&1 &
  pid=$!
  wait_for 60 "mfsmaster did not start" "$d/master.log" up_and "$pid" mfsmaster "$d/master.log" \
    grep -q 'mfsmaster daemon initialized properly' "$d/master.log"
  for i in 1 2 3; do
    mkdir -p "$d/cs$i/hdd"
    echo "$d/cs$i/hdd" >"$d/cs$i/mfshdd.cfg"
    cat >"$d/cs$i/mfschunkserver.cfg" <<EOF
WORKING_USER = root
WORKING_GROUP = root
DATA_PATH = $d/cs$i
HDD_CONF_FILENAME = $d/cs$i/mfshdd.cfg
MASTER_HOST = $peer_addr
CSSERV_LISTEN_PORT = $((9421 + i))
EOF
    nsx moosefs mfschunkserver -f -c "$d/cs$i/mfschunkserver.cfg" </dev/null >"$d/cs$i.log" 2>&1 &
    mfs_cs_pids[i]=$!
  done
  wait_for 60 "the three chunkservers did not register with the master" "$d/master.log" mfs_registered
  alive "$pid" || die "mfsmaster exited; $(log_gist "$d/master.log")"
  out=$(timeout "$peer_timeout" nsenter --net="/run/netns/$(peer_ns moosefs)" \
    mfsmount "$mnt" -H "$peer_addr" </dev/null 2>&1) || die "mfsmount failed: $out"
  wait_for 30 "the MooseFS mount did not appear at $mnt" - mountpoint -q "$mnt"
  out=$(nsx moosefs mfssetgoal -r 3 "$mnt" 2>&1) || die "mfssetgoal -r 3 failed: $out"
  out=$(nsx moosefs mfsgetgoal "$mnt" 2>&1)
  [[ $out == *": 3" ]] || die "the root's goal is not 3 after mfssetgoal: $out"
  # A file written through the mount must get three copies.
  python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, b"probe" * 800); os.fsync(fd); os.close(fd)' "$mnt/probe"
  wait_for 60 "a probe file did not get 3 copies" "$d/master.log" mfs_probe_has_3_copies
  nsx moosefs mfssettrashtime 0 "$mnt/probe" >/dev/null 2>&1 || true
  rm -f "$mnt/probe"
}

peer_up() {
  case $1 in
    glusterfs) glusterfs_up ;;
    moosefs) moosefs_up ;;
    *) die "unknown peer $1" ;;
  esac
}

# is_mounted DIR: DIR is a mount point (also when its FUSE daemon is gone and stat fails).
is_mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

# unmount_peer DIR: unmount, lazily if it stays busy.
unmount_peer() {
  is_mounted "$1" || return 0
  timeout 30 umount "$1" 2>/dev/null || { sleep 1 && timeout 30 umount "$1" 2>/dev/null; } ||
    umount -l "$1" 2>/dev/null || say "could not unmount $1"
}

# peer_down TARGET: unmount, stop every process in the namespace, delete it and the storage.
# Idempotent; safe at any point of peer_up.
peer_down() {
  local t=$1 ns mnt d pids all="" p s deadline socks=()
  ns=$(peer_ns "$t")
  mnt=$(peer_mnt "$t")
  d=$(peer_dir "$t")
  unmount_peer "$mnt"
  if [ -e "/run/netns/$ns" ]; then
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    for p in $pids; do
      # glusterd's bricks and self-heal daemon keep their sockets in /var/run/gluster.
      while read -r s; do socks+=("$s"); done < <(tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null |
        grep -A1 -x -- -S | grep -E '^/(var/)?run/gluster/[0-9a-f]+\.socket$' || true)
    done
    all=$pids
    # The FUSE client first, while the servers it may still talk to on its way out are up.
    deadline=$((SECONDS + 10))
    while [ $SECONDS -lt $deadline ] && for p in $(ip netns pids "$ns" 2>/dev/null); do
      tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null
      echo
    done | grep -Eq '^(mfsmount|/usr/sbin/glusterfs .*--process-name fuse)'; do
      unmount_peer "$mnt"
      sleep 0.2
    done
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086
      kill -TERM $pids 2>/dev/null || true
      deadline=$((SECONDS + 20))
      while [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do
        # A FUSE daemon that was still mounting when it got SIGTERM leaves only once unmounted.
        unmount_peer "$mnt"
        sleep 0.2
      done
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      if [ -n "$pids" ]; then
        say "$(peer_label "$t"): still running 20 s after SIGTERM, killing:" \
          "$(for p in $pids; do printf '%s (%s) ' "$p" "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-60)"; done)"
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
      fi
    fi
    ip netns delete "$ns" 2>/dev/null || say "could not delete network namespace $ns"
  fi
  # A daemon whose parent (a worker of ci/bench-fs) was stopped first is reaped by init: wait
  # until it is, so that nothing of ours, not even a zombie, outlives the script.
  deadline=$((SECONDS + 10))
  for p in $all; do
    while [ -e "/proc/$p" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  done
  for p in "${socks[@]}"; do rm -f "$p"; done
  unmount_peer "$mnt" # a mount whose daemon was killed
  if is_mounted "$mnt"; then
    say "$mnt is still mounted; leaving $d in place"
    return 0
  fi
  rmdir "$mnt" 2>/dev/null || true
  rm -rf --one-file-system "$d" || say "could not remove $d"
  return 0
}

# At the very end: everything of every peer, and glusterd's fixed-path state if we made it.
peers_cleanup() {
  local t p
  for t in "${peer_targets[@]}"; do peer_down "$t"; done
  peer_remove_policy
  for p in "${peer_gluster_state[@]}"; do
    [ -d "$p" ] || continue
    rm -f "$p/gsyncd_template.conf"
    rmdir "$p" 2>/dev/null || true
  done
}
