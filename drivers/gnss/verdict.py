"""The verdict: fix or no fix, 2D or 3D, read sentence by sentence as gpsd reads them.

No thread of its own; one instance per epoch assembler (GNSS reader thread,
``gnss decode``). gpsd (3.27, drivers/driver_nmea0183.c, libgpsd_core.c)
does not weigh the sentences of an epoch together: each position sentence
states a mode, the last statement stands, and a few facts carry from one
sentence to the next and from one epoch to the next. We follow that order,
because it is what a receiver means: a receiver that sends RMC valid and
then, for the same time, a GGA saying it uses no satellite has withdrawn
the fix it announced (and one that sends them the other way round has
recovered it). The rules, each with its reason:

- GGA: a fix (quality 1-7, 9) with coordinates is 2D; 3D with an altitude
  and at least 4 satellites used; no fix with fewer than 3 satellites used
  (an empty count is 0) from a GP or GN talker: a dead-reckoned or stale
  solution (gpsd's "3 > gga_sats_used"). Per-system talkers (GL, GA, BD)
  count one constellation and are not judged by it, as in gpsd.
- GNS: mode N or empty is no fix; navigation status U or V says nothing;
  otherwise 2D, 3D with an altitude and more than 3 satellites.
- RMC: valid (A) with coordinates is 2D, or 3D when the last fix was 3D,
  when the last GSA listed more than 3 satellites, or when this epoch
  already reported an altitude (old receivers that never say 3D).
  Status V, D or anything else is no fix (gpsd accepts only A).
- GLL: valid (A, mode not N) with coordinates is 3D when an altitude is
  known in this epoch or the last GSA listed more than 3 satellites, else
  2D (gpsd leaves the mode unset when the last epoch had an altitude and
  this one is 2D so far: no fix until another sentence says more).
- GSA: its mode 1, 2 or 3 is a statement like any other, except a GPGSA
  once the receiver has sent per-system GSAs (GL, GA, GB, GN...): gpsd
  ignores its mode. Its satellites (the PRNs of one run of GSAs) feed the
  RMC and GLL rules above.
- Don't downgrade: a 2D statement after a 3D one in the same epoch keeps 3D
  when an altitude has been seen in this or the previous epoch (gpsd: RMC
  and GLL do not know the dimension; a 2D word after 3D is not a loss of
  the vertical).
- The verdict of an epoch is the mode after its last timed sentence; a
  sentence without a time that follows it (a GSA sent last) can raise it,
  never lower it: gpsd reports at the last timed sentence and again after
  such a sentence, and the epoch's fix is its best report (the captures'
  README). A GSA sent before the timed sentences of an epoch speaks for
  the state carried into it, as in gpsd.

Where we are stricter than gpsd (never a position where gpsd has none; at
worst a fix gpsd reports and we do not):

- a GGA of quality 0 is no fix even with coordinates (gpsd takes the mode
  from the coordinates alone and reports such epochs as 2D/3D fixes);
- an RMC valid with mode indicator N (data not valid) is no fix;
- a GGA with an empty quality is no fix (gpsd takes its coordinates);
- coordinates of exactly 0,0 are never a position (``sentences.py``);
- simulated epochs are never fixes (``epoch.py``).
"""

from __future__ import annotations

from drivers.gnss.sentences import Observation

NOT_SEEN, NO_FIX, MODE_2D, MODE_3D = 0, 1, 2, 3
_ONE_SYSTEM_GGA = ("GP", "GN")  # fewer than 3 used is no fix for these; "00" used is no fix for every talker


class ModeModel:
    """gpsd's running state: the mode and altitude of this epoch and the last, the last GSA's satellites."""

    __slots__ = ("_enders", "_gsa_talker", "_last_tag", "_last_tod", "_other_gsa", "fix_alt", "fix_mode", "last_alt",
                 "last_mode", "old_alt", "reason", "reliable", "sats")

    def __init__(self) -> None:
        self.fix_mode = NOT_SEEN  # this epoch, merged so far (gpsd's gpsdata.fix.mode)
        self.fix_alt = False  # this epoch reported an altitude
        self.last_mode = NOT_SEEN  # after the previous sentence (gpsd's lastfix)
        self.last_alt = False
        self.old_alt = False  # the previous epoch (gpsd's oldfix)
        self.sats: set[int] = set()  # PRNs of the last run of GSAs
        self._gsa_talker = ""  # talker of the GSA just before, "" after any other sentence
        self._other_gsa = False  # a GSA from another talker than GP was seen
        self.reason: str | None = None  # what said no fix last
        self._enders: set[str] = set()  # sentence types that end a cycle
        self._last_tag: str | None = None  # type of the last timed sentence
        self._last_tod: int | None = None
        self.reliable = False  # gpsd trusts its end-of-cycle detector

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def apply(self, obs: Observation, *, new_epoch: bool) -> bool:
        """One sentence, in the order received; ``new_epoch``: the first timed sentence of an epoch.
        True if gpsd would report after it (see :meth:`_reports`)."""
        mode = self._statement(obs)
        if mode is not None and mode != NO_FIX and self.fix_mode == MODE_3D and (self.last_alt or self.old_alt):
            mode = MODE_3D  # don't downgrade
        if new_epoch:
            self.fix_mode, self.fix_alt = NOT_SEEN, False
        if mode is not None:
            self.fix_mode = mode
        if obs.alt_seen:
            self.fix_alt = True
        if new_epoch:
            self.old_alt = self.last_alt
        self.last_mode, self.last_alt = self.fix_mode, self.fix_alt
        if obs.kind != "GSA":
            self._gsa_talker = ""
        return self._reports(obs, stated=mode is not None)

    def _reports(self, obs: Observation, *, stated: bool) -> bool:
        """gpsd's end-of-cycle detector: the last timed sentence before the time changes becomes a cycle
        ender (by sentence type) and is reported on from then on, as is any sentence without a time after
        it. Until the first ender, and for good after an RMC V or GGA 0 without time or date, gpsd does not
        trust its detector and reports after every sentence that states a mode or a position."""
        timed = obs.tod_ms is not None and (obs.kind != "RMC" or bool(obs.fix))  # gpsd times an RMC only if A
        reported = False
        if timed:
            if self._last_tod is not None and obs.tod_ms != self._last_tod and self._last_tag is not None \
                    and self._last_tag not in self._enders:
                self._enders.add(self._last_tag)
                self.reliable = True
            reported = obs.kind in self._enders
            self._last_tag, self._last_tod = obs.kind, obs.tod_ms
        elif self._last_tag in self._enders:
            reported = True
        if obs.unsure_cycle:
            self.reliable = False
            return True
        return reported or (stated and not self.reliable)

    def _statement(self, obs: Observation) -> int | None:
        kind = obs.kind
        if kind == "GGA":
            if not obs.fix or obs.lat is None:
                return self._no_fix("GGA says no fix" if obs.fix is False else "GGA without a fix quality")
            sats = obs.sats_used or 0
            if obs.sats_used == 0 or (sats < 3 and obs.talker in _ONE_SYSTEM_GGA):  # "00" used: no fix, any talker
                return self._no_fix("no satellites used" if sats == 0 else f"{sats} satellites used")
            return MODE_3D if obs.alt_msl is not None and sats >= 4 else MODE_2D
        if kind == "RMC":
            if not obs.fix or obs.lat is None:
                return self._no_fix("RMC says no fix")
            if self.last_mode == MODE_3D or len(self.sats) > 3 or self.fix_alt:
                return MODE_3D
            return MODE_2D
        if kind == "GLL":
            if not obs.fix or obs.lat is None:
                return self._no_fix("GLL says no fix")
            if self.fix_alt or len(self.sats) > 3:
                return MODE_3D
            if self.fix_mode < MODE_2D or not self.old_alt:
                return MODE_2D
            return NOT_SEEN
        if kind == "GNS":
            if obs.fix is None:
                return None  # navigation status U/V: gpsd ignores the sentence
            if not obs.fix or obs.lat is None:
                return self._no_fix("GNS says no fix")
            return MODE_3D if obs.alt_msl is not None and (obs.sats_used or 0) > 3 else MODE_2D
        if kind == "GSA":
            return self._gsa(obs)
        if kind == "PGRMZ" and obs.gsa_mode is not None:
            return self._no_fix("PGRMZ says no fix") if obs.gsa_mode == NO_FIX else obs.gsa_mode
        return None

    def _gsa(self, obs: Observation) -> int | None:
        talker = obs.talker
        if not self._gsa_talker or (talker == self._gsa_talker and talker[1] not in "NQ"):
            self.sats = set()
        self._gsa_talker = talker
        self.sats.update(obs.gsa_prns)
        ignored = talker == "GP" and self._other_gsa
        if talker != "GP":
            self._other_gsa = True
        if obs.gsa_mode is None or ignored:
            return None
        return self._no_fix("GSA says no fix") if obs.gsa_mode == NO_FIX else obs.gsa_mode

    def _no_fix(self, reason: str) -> int:
        self.reason = reason
        return NO_FIX
