#!/usr/bin/env bash
# Install everything the test suite needs (Debian packages, Python packages) and run it.
# The tests start and stop their own services (emulators, fake-gcs-server, dcmtk, Orthanc).
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TCP_NODELAY=1  # DCMTK stalls ~45 ms per C-STORE on delayed ACKs without it

need_apt=()
command -v storescu >/dev/null || need_apt+=(dcmtk)
command -v Orthanc >/dev/null || need_apt+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null || need_apt+=(dicom3tools)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
# crosswalk databases (tests/support/databases.py runs throwaway servers of both)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
# the gateway image test (tests/gcp/test_gateway_image.py): podman with runc, and mmdebstrap for a base image
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
command -v mmdebstrap >/dev/null || need_apt+=(mmdebstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

SDK="${CLOUDSDK_ROOT:-/usr/lib/google-cloud-sdk}/platform"
for jar in "$SDK/cloud-firestore-emulator/cloud-firestore-emulator.jar" "$SDK"/pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar; do
  if [ ! -e "$jar" ]; then
    echo "missing Google emulator: $jar (install google-cloud-cli with the firestore and pubsub emulators)" >&2
    exit 1
  fi
done

EXTRAS=test source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
set +e
# one worker per core (AXIOM_TEST_WORKERS=0: none), each taking whole test files, so a
# file's tests keep their order and its module fixtures; most of the suite waits on
# peers and processes, so two workers nearly halve the time on 2 cores
"$ROOT/.venv/bin/python" -m pytest -n "${AXIOM_TEST_WORKERS:-auto}" --dist loadfile "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "no tests ran: failing" >&2
  exit 1
fi
exit $rc
