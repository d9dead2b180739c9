"""Fusion methods. One file per method; register it here with one line (name -> "module:Class")."""

BUILTIN: dict[str, str] = {
    "merge": "fusers.merge:Merge",
    "ensemble": "fusers.ensemble:Ensemble",
    "cool-fusion": "fusers.cool_fusion:CoolFusion",
    "fusellm": "fusers.fusellm:FuseLLM",
    "fusechat": "fusers.fusechat:FuseChat",
    "profuser": "fusers.profuser:ProFuser",
    "fusechat3": "fusers.fusechat3:FuseChat3",
}
