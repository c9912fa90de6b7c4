"""The papers' benchmark protocols for ACDC and LA, as data, and the folds / labeled settings they imply.

Spec: ``methods.md`` 7.1 (ACDC) and 7.2 (LA). The id lists are protocol metadata (which patient goes
where), copied from the SSL4MIS / UA-MT ``*.list`` files that ACTION, ACTION++, MONA and ARCO use.

ACDC (SSL4MIS lists, 70 / 10 / 20 patients)
    Case ids are ``patientXXX_frame01`` (end-diastole, ED) and ``patientXXX_frame02`` (end-systole,
    ES) for either input layout, exactly the names of the SSL4MIS lists. Labeled settings
    ``1pct`` / ``5pct`` / ``10pct`` label 1 / 3 / 7 patients (both frames), the first patients of
    the SSL4MIS ``train.list`` order.

LA (UA-MT lists, 80 / 20 volumes)
    Case ids are the challenge ids (``06SR5RBREL16DQ6M8LWS``). The protocol has no validation set
    and model selection on the test set is not allowed, so fold 0 holds out 8 training volumes
    (every tenth of ``train.list``, starting with the tenth: :data:`LA_VAL`) and trains on the other
    72; fold ``all`` trains on all 80, exactly the papers' training set. Labeled settings label 1 / 4
    / 8 volumes (the first ids of ``train.list``). :data:`LA_DEV` (``convert-la --protocol dev``) is
    the same but for fold 0, which validates on :data:`LA_DEV_VAL` (5 of the first 30 ids, which the
    development copy holds) instead.

``--cv``: nnU-Net's usual K-fold cross-validation over the non-test patients (grouped by patient, so
the two ACDC frames of a patient share a fold), with each setting made per fold: the same number of
labeled patients, taken in the order "protocol labeled ids first, then the benchmark lists", skipping
patients that are validation cases of that fold. Wherever the protocol's ids are training cases of a
fold, that fold labels exactly them.

This module imports nothing heavy (the folds use scikit-learn lazily through ``data.splits``).
"""
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from nnunet_semicl.errors import ConversionError, SplitError

# ------------------------------------------------------------------------------------------------
# ACDC (methods.md 7.1): patients in the order of the SSL4MIS lists
# ------------------------------------------------------------------------------------------------
_ACDC_TRAIN_NUMBERS = (
    "099", "038", "050", "100", "058", "021", "049", "020", "072", "040", "060", "089",
    "004", "056", "098", "096", "031", "018", "094", "047", "048", "055", "097", "074",
    "043", "041", "063", "037", "095", "054", "026", "088", "032", "069", "006", "071",
    "012", "073", "061", "017", "025", "010", "057", "029", "051", "005", "036", "046",
    "062", "034", "076", "092", "070", "077", "067", "003", "091", "016", "014", "044",
    "042", "090", "053", "027", "035", "086", "023", "009", "079", "015",
)
_ACDC_VAL_NUMBERS = ("028", "085", "082", "087", "019", "030", "078", "045", "002", "039")
_ACDC_TEST_NUMBERS = (
    "011", "013", "084", "033", "093", "022", "068", "024", "083", "081", "080", "001",
    "007", "066", "008", "065", "075", "064", "059", "052",
)
ACDC_TRAIN = tuple(f"patient{n}" for n in _ACDC_TRAIN_NUMBERS)
ACDC_VAL = tuple(f"patient{n}" for n in _ACDC_VAL_NUMBERS)
ACDC_TEST = tuple(f"patient{n}" for n in _ACDC_TEST_NUMBERS)
ACDC_SETTINGS = (
    ("1pct", ("patient099",)),
    ("5pct", ("patient099", "patient038", "patient050")),
    ("10pct", ("patient099", "patient038", "patient050", "patient100", "patient058", "patient021", "patient049")),
)
#: case-id suffixes per patient: SSL4MIS naming, frame01 = ED, frame02 = ES (for both input layouts)
ACDC_FRAMES = (("_frame01", "ED"), ("_frame02", "ES"))
ACDC_GROUP_REGEX = r"patient\d+"

# ------------------------------------------------------------------------------------------------
# LA (methods.md 7.2): the UA-MT lists
# ------------------------------------------------------------------------------------------------
LA_TRAIN_LIST = (
    "06SR5RBREL16DQ6M8LWS", "0RZDK210BSMWAA6467LU", "1D7CUD1955YZPGK8XHJX", "1GU15S0GJ6PFNARO469W",
    "1MHBF3G6DCPWHSKG7XCP", "23X6SY44VT9KFHR7S7OC", "2XL5HSFSE93RMOJDRGR4", "38CWS74285MFGZZXR09Z",
    "3C2QTUNI0852XV7ZH4Q1", "3DA0T2V6JJ2NLUAV6FWM", "4498CA6DZWELOXCBRYRF", "45C45I6IXAFGNRO067W9",
    "4CHFJGF6ZUM7CMZTNFQF", "4EPVTT1HPA8U60CDUKXE", "57SGAJMLCTCH92QUA0EE", "5BHTH9RHH3PQT913I59W",
    "5FKQL4K14KCB72Y8YMC2", "5HH0WPWIY06DLAFOBQ4M", "5QFK2PMHNX7UALK52NNA", "5UB5KFD2PK38Z4LS6W80",
    "6799D6LEBH3NSRV1KH27", "78NJ5YFQF72BGC8RO51C", "7FUCNXB39F78WTOP5K71", "8GYK8A9MBRC9TV0FVSRA",
    "8M99G0JLAXG9GLPV0O8G", "8RE90C8H5DKF4V6HO8UU", "8ZG2TRZ81MAWHZPN9KKG", "9DCM2IB45SK6YKQNYUQY",
    "9DHWWP5Y66VDMPXISZ13", "9DQYTIU00I4JC0OEOKQQ", "A11O45O3NAXWM7T2H8CH", "A4R1S23KR0KU2WSYHK2X",
    "A5RNNK0A891WUSC2V624", "AT5CRO5JUDBWD4RUPXSQ", "BNK95S2SJXEGSW7VAKYU", "BXJWOUYP2J3EN4U92517",
    "BYSRSI3H4YTWKMM3MADP", "BZUFJX66T0W6ZPVTL9DU", "CB5P5W7X310NIIVU7UZV", "CBIJFVZ5L9BS0LKWE8YL",
    "CCGAKN4EDT72KC8TTJ76", "CLXFYOBQDCVXQ9P7YC07", "CMPXO4J23G58J53Q98SZ", "CZPMV6KWZ4I7IJJP9FOK",
    "DLKXBV73A55ZTSZ0QQI2", "DQ5UYBGR5QP6L692QSG6", "DYXSCIWHLSUOZIDDSZ40", "E2ZMO66WGS74UKXTZPPQ",
    "EJ5V7SPR4961JWD6SS8V", "FGM5NIWN3URY4HF4WNUW", "GSC9KNY0VEZXFSGWNF25", "HVE7DR3CUA2IM3RC6OMA",
    "HZZ4O0BRKF8S0YX3NNF7", "I2VZ7N8H9QYNYT7ZZF1Y", "IDWWHGWJ5STOQXSDT6GU", "IIY6TYJMTJIZRIZLB9YW",
    "IJJY51YW3W4YJJ7DTVTK", "IQYKPTWXVV9H0IHB8YXC", "JEC6HJ7SQJXBKVREX03F", "JGFOLWJF7YCYD8DPHQNH",
    "K32FD6LRSUSSXGS1YUOX", "KM5RYAMP4P4ZP6XWP3Q2", "KSNYHUBHHUJTYJ14UQZR", "LH4FVU3TQDEC87YGN6FL",
    "LJSDNMND9SHKM7Q4IRHJ", "MFTDVMBWFNQ3F5KHBRDR", "MJHV7F65TB2A76CQLOC3", "MVKIPGBKTNSENNP1S4HB",
    "O5TSIKRD4AIB8K84WIR9", "OIRDLE32TXZX942FVZMM", "P1OTI3IWJUIB5NRLULLH", "PVNXUK681N9BY14K4Z86",
    "Q0MEX9ZIKAGJORSPLQ3Y", "Q7J0WYM695R9MA285ZW0", "QZC1W0FNR19KJFLOCFLH", "R8ER97O9UUN77C02VE2J",
    "RSZY41MT2FGDKHWWL5L2", "SN4LF8SGBSRQUPTDSX78", "TDDI6L3Y0L9VVFP9MNFS", "UZUZZT2W9IUSHL6ASOX3",
)
LA_TEST = (
    "UPT6DX9IQY9JAZ7HJKA7", "UTBUJIWZMKP64E3N73YC", "ULHWPWKKLTE921LQLH1P", "V0MZOWJ6MU3RMRCV9EXR",
    "VDOF02M8ZHEAADFMS6NP", "VG4C826RAAKVMV9BQLVD", "VIXBEFTNVHZWKAKURJBN", "VQ2L3WM8KEVF6L44E6G9",
    "WBG9WYZ1B25WDT5WAT8T", "WMDG2EFA6L2SNDZXIRU0", "WNPKE0W404QE9AELX1LR", "WSJB9P4JCXUVHBOYFVWL",
    "WW8F5CO4S4K5IM5Z7EXX", "X18LU5AOBNNDMLTA0JZL", "XYDLYJ5CS19FDBVLJIPI", "Y7ZU0B2APPF54WG6PDMF",
    "YDKD1HVHSME6NVMA8I39", "Z9GMG63CJLL0VW893BB1", "ZIJLJAVQV3FJ6JSQOH1E", "ZQPMJ4XEC5A4BISD45P1",
)
#: Our validation volumes for fold 0 (the protocol has none): every tenth id of train.list from the
#: tenth on (``LA_TRAIN_LIST[9::10]``). Spread over the list, disjoint from every labeled setting.
LA_VAL = (
    "3DA0T2V6JJ2NLUAV6FWM", "5UB5KFD2PK38Z4LS6W80", "9DQYTIU00I4JC0OEOKQQ", "CBIJFVZ5L9BS0LKWE8YL",
    "FGM5NIWN3URY4HF4WNUW", "JGFOLWJF7YCYD8DPHQNH", "OIRDLE32TXZX942FVZMM", "UZUZZT2W9IUSHL6ASOX3",
)
LA_TRAIN = tuple(i for i in LA_TRAIN_LIST if i not in LA_VAL)
LA_SETTINGS = (
    ("1pct", LA_TRAIN_LIST[:1]),
    ("5pct", LA_TRAIN_LIST[:4]),
    ("10pct", LA_TRAIN_LIST[:8]),
)
#: The development copy's validation volumes (``convert-la --protocol dev``; the CPU accuracy protocol): the
#: copy holds the first 30 ids of train.list, of which :data:`LA_VAL` gives only 3. Every fifth id of the
#: first 30 from the tenth on (``LA_TRAIN_LIST[9:30:5]``): LA_VAL's 3 present volumes and 2 more, after the
#: 8 ids that the settings label, so no setting labels a validation volume.
LA_DEV_VAL = LA_TRAIN_LIST[9:30:5]


# ------------------------------------------------------------------------------------------------
# the protocol object
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    """Groups (patients / volumes) per role, the labeled settings, and how groups map to case ids."""
    name: str
    train: Tuple[str, ...]                       # training groups of fold 0, in benchmark list order
    val: Tuple[str, ...]                         # validation groups of fold 0
    test: Tuple[str, ...]                        # held out: imagesTs / labelsTs
    settings: Tuple[Tuple[str, Tuple[str, ...]], ...]
    suffixes: Tuple[str, ...] = ("",)            # case id = group + suffix
    group_regex: Optional[str] = None            # for data.splits (None: every case is its own group)
    source: str = ""
    list_order: Tuple[str, ...] = ()             # benchmark list order of train+val groups (default train, val)
    default_setting: str = "5pct"                # used by our trainers without -p (the papers' headline setting)

    def cases_of(self, groups: Iterable[str]) -> List[str]:
        return [g + s for g in groups for s in self.suffixes]

    def group_of(self, case: str) -> str:
        if self.group_regex is None:
            return case
        m = re.search(self.group_regex, case)
        if m is None:
            raise ConversionError(f"Case id '{case}' does not match the group pattern '{self.group_regex}'.")
        return m.group(0)

    @property
    def all_groups(self) -> Tuple[str, ...]:
        return self.train + self.val + self.test

    def role_of(self, group: str) -> str:
        for role in ("train", "val", "test"):
            if group in getattr(self, role):
                return role
        raise KeyError(group)

    def check(self) -> None:
        """Raise ConversionError unless the roles are disjoint and every labeled id is a training group."""
        seen: Dict[str, str] = {}
        for role in ("train", "val", "test"):
            for g in getattr(self, role):
                if g in seen:
                    raise ConversionError(f"{self.name}: '{g}' is listed as {seen[g]} and {role}.")
                seen[g] = role
        for name, ids in self.settings:
            bad = [g for g in ids if seen.get(g) != "train"]
            if bad:
                raise ConversionError(f"{self.name}: setting '{name}' labels {bad}, which are not training groups.")
            if len(set(ids)) != len(ids):
                raise ConversionError(f"{self.name}: setting '{name}' lists an id twice.")


ACDC = Protocol(name="ACDC (SSL4MIS 70/10/20 patients)", train=ACDC_TRAIN, val=ACDC_VAL, test=ACDC_TEST,
                settings=ACDC_SETTINGS, suffixes=tuple(s for s, _ in ACDC_FRAMES), group_regex=ACDC_GROUP_REGEX,
                source="SSL4MIS / ARCO dataset_split/ACDC_lists (train.list, val.list, test.list)")
LA = Protocol(name="LA 2018 (UA-MT 80/20 volumes; fold 0 validates on 8 training volumes)", train=LA_TRAIN,
              val=LA_VAL, test=LA_TEST, settings=LA_SETTINGS, suffixes=("",), group_regex=None,
              source="UA-MT / ARCO dataset_split/LA_lists (train.list, test.list)", list_order=LA_TRAIN_LIST)
#: the development copy's protocol: the papers' lists and settings, fold 0 validating on LA_DEV_VAL
LA_DEV = Protocol(name="LA 2018, development fold (UA-MT lists; fold 0 validates on 5 of the first 30 volumes)",
                  train=tuple(i for i in LA_TRAIN_LIST if i not in LA_DEV_VAL), val=LA_DEV_VAL, test=LA_TEST,
                  settings=LA_SETTINGS, suffixes=("",), group_regex=None, source=LA.source, list_order=LA_TRAIN_LIST)


# ------------------------------------------------------------------------------------------------
# folds and settings
# ------------------------------------------------------------------------------------------------
def make_folds(protocol: Protocol, present_cases: Sequence[str], cv_folds: Optional[int] = None) -> List[dict]:
    """``splits_final.json`` content over the present training + validation cases.

    Without ``cv_folds``: one fold, the benchmark split (train / val of the protocol). With it:
    ``cv_folds``-fold cross-validation over the non-test groups (``data.splits.default_folds``: nnU-Net's
    own KFold, shuffled, seed 12345, over the sorted patient ids, so both frames of a patient share a
    fold; for LA exactly nnU-Net's default split).
    """
    present = set(present_cases)
    train = sorted(c for c in protocol.cases_of(protocol.train) if c in present)
    val = sorted(c for c in protocol.cases_of(protocol.val) if c in present)
    if cv_folds is None:
        if not train:
            raise ConversionError(f"{protocol.name}: none of the protocol's training cases were converted.")
        if not val:
            raise ConversionError(f"{protocol.name}: none of the protocol's validation cases are in the input, so "
                                  f"fold 0 would have no validation case. Provide them, or use --cv.")
        return [{"train": train, "val": val}]
    from nnunet_semicl.data.splits import default_folds

    if cv_folds < 2:
        raise ConversionError(f"--cv needs at least 2 folds, got {cv_folds}.")
    try:
        return default_folds(train + val, n_splits=cv_folds, group_regex=protocol.group_regex)
    except SplitError as e:
        raise ConversionError(f"{protocol.name}: {e}") from None


def labeled_order(protocol: Protocol) -> List[str]:
    """Groups in the order labeled cases are taken: protocol labeled ids, then the benchmark list order."""
    ids = [g for _, s in sorted(protocol.settings, key=lambda x: len(x[1]), reverse=True) for g in s]
    rest = list(protocol.list_order) or list(protocol.train) + list(protocol.val)
    return list(dict.fromkeys(ids + rest))


def make_settings(protocol: Protocol, folds: List[dict], cv: bool = False, created_by: str = ""
                  ) -> Tuple[List[dict], List[Tuple[str, str]]]:
    """``splits_semicl_<setting>.json`` contents (via ``data.splits.make_setting``) and skipped settings.

    A setting whose labeled ids are not all among the converted cases (``--allow-missing``) is skipped
    with its reason: it would not be the protocol's setting.
    """
    from nnunet_semicl.data.splits import make_setting

    all_cases = sorted({c for f in folds for c in f["train"] + f["val"]})
    present_groups = {protocol.group_of(c) for c in all_cases}
    order = labeled_order(protocol)
    contents, skipped = [], []
    for name, ids in protocol.settings:
        missing = [g for g in ids if g not in present_groups]
        if missing:
            skipped.append((name, f"labeled ids not in the input: {', '.join(missing)}"))
            continue
        desc = (f"{protocol.name}: {len(ids)} labeled {'patients' if protocol.group_regex else 'volumes'} "
                f"({', '.join(ids)}); every other training case is unlabeled")
        try:
            if not cv:
                content = make_setting(folds, name, labeled_ids=list(ids), group_regex=protocol.group_regex,
                                       all_cases=all_cases, created_by=created_by)
            else:
                content = make_setting([], name, labeled_ids=list(ids), group_regex=protocol.group_regex,
                                       all_cases=all_cases, created_by=created_by)
                per_fold = []
                for k, f in enumerate(folds):
                    fold_groups = {protocol.group_of(c) for c in f["train"]}
                    chosen = [g for g in order if g in fold_groups][:len(ids)]
                    per_fold.append(make_setting([f], name, labeled_ids=chosen, group_regex=protocol.group_regex,
                                                 created_by=created_by)["folds"][0])
                content["folds"] = per_fold
                desc += (f" (fold 'all'; with --cv each fold labels {len(ids)} of its own training groups, "
                         f"protocol ids first)")
        except SplitError as e:
            raise ConversionError(f"setting '{name}': {e}") from None
        content["description"] = desc
        contents.append(content)
    return contents, skipped
