"""How the sandbox speaks: what it does beyond the vendors' documents, switch by switch.

:data:`LENIENT` (the default) is the sandbox the worker was built against: the shapes that
API-NOTES.md marks as assumed, plus conveniences nobody documented. :data:`STRICT` keeps
only what the documents say ("seed guide" = seeds/flexperto-api-developer-guide.txt):

- archive list, no query parameters (400 naming the first): the seed guide's polling step
  names none; ``limit``/``offset`` are assumed in API-NOTES, and ``status`` is confirmed
  only on a sibling path;
- archive list, AVAILABLE records only: the seed guide "lists all available archive
  records" and its answer "holds the list of available archive records";
- archive list answer ``{"items": [...]}`` only, everything at once: the seed guide names
  only ``items``; ``total`` is assumed in API-NOTES;
- archive record without ``size``: API-NOTES' record shape has none;
- abandon answers 204 without a body: neither document gives an answer body;
- TE ``internal_updated_at_start`` filter refused, ``internal_updated_at`` never shown:
  API-NOTES' contact and user fields and list filters do not have them;
- TE queries: only ``page[number]``, ``page[size]`` and ``filter``, and only the filter
  attributes of API-NOTES' table (400 otherwise, in the words testers saw from TE);
- ``POST /insights`` answers 201 ``{}``: API-NOTES confirms the 201, the body is assumed.

STRICT keeps what API-NOTES does state: the ``/api/v2`` prefix, the record subject with
its people, and ``data`` on listed insights; and ``Range`` on the storage host, which the
guide says is S3.
"""

from __future__ import annotations

from dataclasses import dataclass

UPDATED_SINCE_MODES = ("supported", "rejected", "ignored")


@dataclass(frozen=True)
class Dialect:
    """What the sandbox does beyond the vendors' documents; each field says which way."""

    # Flexperto
    # Where the archive endpoints live ("" = at the root); other prefixes -> 404.
    flexperto_prefix: str = "/api/v2"
    # The archive list takes status, limit, offset; False: ANY query parameter -> 400.
    flexperto_list_params: bool = True
    # A list without status filter shows every status; False: only AVAILABLE records.
    flexperto_list_all_statuses: bool = True
    # The list answer has total/limit/offset beside items; False: only {"items": [...]}.
    # Without paging parameters or without a total, a list without limit answers every
    # matching record at once: a default page would hide records the client cannot see.
    flexperto_list_extras: bool = True
    # Records carry "size"; False: no "size" key.
    flexperto_record_size: bool = True
    # The subject carries start, end, moderator, participants; False: only conference_id.
    flexperto_record_people: bool = True
    # Abandon answers 200 and a JSON body; False: 204 with an empty body.
    flexperto_abandon_body: bool = True
    # The storage host honours Range requests (206); False: always the whole file (200).
    # STRICT keeps them: the guide's storage host is S3, which has them.
    s3_ranges: bool = True
    # Registering a webhook answers 201 {"id", "url", "topic"}, and
    # DELETE /communication/subscriptions/subscriptions/{id} removes one; False: 201 with
    # body {}, and that path is 404 (the guide shows neither).
    flexperto_subscription_id: bool = True
    # Total Expert
    # The internal_updated_at_start filter on /contacts and /users: "supported", "rejected"
    # (400) or "ignored" (accepted, no effect).
    te_updated_since: str = "supported"
    # Contacts and users carry internal_updated_at; False: in no answer (still kept inside).
    te_extra_fields: bool = True
    # True: query parameters other than page[number], page[size], filter, and filter
    # attributes other than the documented ones -> 400.
    te_strict_queries: bool = False
    # POST /insights answers 201 {"id", "created"}; False: 201 with body {}.
    te_insight_answer_id: bool = True
    # GET /insights items carry "data"; False: no "data" key.
    te_insight_data_listed: bool = True

    def __post_init__(self) -> None:
        if self.te_updated_since not in UPDATED_SINCE_MODES:
            raise ValueError(
                f"te_updated_since must be one of {UPDATED_SINCE_MODES}, "
                f"not {self.te_updated_since!r}"
            )


LENIENT = Dialect()
STRICT = Dialect(
    flexperto_list_params=False,
    flexperto_list_all_statuses=False,
    flexperto_list_extras=False,
    flexperto_record_size=False,
    flexperto_abandon_body=False,
    flexperto_subscription_id=False,
    te_updated_since="rejected",
    te_extra_fields=False,
    te_strict_queries=True,
    te_insight_answer_id=False,
)
